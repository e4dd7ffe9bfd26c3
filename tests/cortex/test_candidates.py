"""The Candidates page's data, without a browser: the files written as `chimera shadow`
writes them (its own Track, its gate verdict, its atomic JSON writer), read back into the
page's rows; a half-written or missing file is named and the rest still shows; the equity
curves are paired on the bars the active genome saw, as the gates pair them."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import msgspec
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import ShadowGatesConfig
from cortex.candidates import (
    ACTIVE,
    STATUS_FILE,
    TRACK_FILE,
    CandidateFiles,
    aligned,
    candidate_row,
    gate_rows,
    read_candidates,
)
from tools.record import write_json_atomic
from tools.shadow import runner
from tools.shadow.gates import judge

T0 = 1_704_166_200_000
START = 1_000_000.0


def write_candidate(
    shadow_dir: Path, name: str, equity: list[float], promotion: str = "", gates: bool = True
) -> dict:
    """A candidate's status.json and track.json as the shadow's check writes them."""
    d = shadow_dir / name
    d.mkdir(parents=True)
    bar_ts = [T0 + i * 5_000 for i in range(len(equity))]
    track = runner.Track(bar_ts=bar_ts, equity=equity, days=["2024-01-02"], trades=3, pnl=12.5)
    verdict = None
    if gates:
        small = ShadowGatesConfig(min_days=0, min_trades=0, significance=1.0)
        verdict = judge(small, equity, [START] * len(equity), START, 3, 1, 0)
    status = {
        "candidate": name, "source": f"{name}.toml", "family": "default",
        "params": {"energy_threshold": 0.03}, "session": "s-1", "ticks": 1200,
        "decisions": 1100, "divergences": 4,
        "last_divergence": {"seq": 77, "reason": "the strategy read energy 0.02 < 0.03"},
        "fills": 6, "trades": 3, "pnl": 12.5, "equity": equity[-1] if equity else START,
        "days": 1, "violations": 0, "trading_state": "ACTIVE", "joined_late": False,
        "gates": None if verdict is None else msgspec.to_builtins(verdict),
        "promotion": promotion,
    }  # fmt: skip
    write_json_atomic(d / runner.STATUS_FILE, status)
    write_json_atomic(d / runner.TRACK_FILE, msgspec.to_builtins(track))
    return status


def test_the_page_reads_the_file_names_the_shadow_writes() -> None:
    assert (STATUS_FILE, TRACK_FILE) == (runner.STATUS_FILE, runner.TRACK_FILE)


def test_no_shadow_dir_or_an_empty_one_is_no_candidate(tmp_path: Path) -> None:
    assert read_candidates(tmp_path / "shadow") == []
    (tmp_path / "shadow").mkdir()
    assert read_candidates(tmp_path / "shadow") == []


def test_rows_gates_and_promotion_from_the_shadows_files(tmp_path: Path) -> None:
    shadow = tmp_path / "shadow"
    write_candidate(shadow, "calm", [START, START + 50, START + 20], promotion="prm-abc")
    write_candidate(shadow, "wide", [START, START - 10, START - 30])
    write_candidate(shadow, ACTIVE, [START, START, START], gates=False)
    found = read_candidates(shadow)
    assert [c.name for c in found] == [ACTIVE, "calm", "wide"]  # the reference first
    assert all(not c.problems for c in found)
    active, calm, wide = found
    assert calm.equity == [START, START + 50, START + 20]
    assert calm.bar_ts == [T0, T0 + 5_000, T0 + 10_000]

    row = candidate_row(calm, {"prm-abc": "PENDING"})
    assert row["candidate"] == "calm" and row["genes"] == "energy_threshold=0.03"
    assert (row["ticks"], row["trades"], row["P&L"], row["days"]) == ("1,200", "3", "12.50", "1")
    assert (row["divergences"], row["equity"]) == ("4", "1,000,020.00")
    assert row["last divergence"] == "#77 the strategy read energy 0.02 < 0.03"
    assert row["promotion"] == "prm-abc PENDING"
    assert candidate_row(calm, {})["promotion"] == "prm-abc not in the queue"
    assert candidate_row(active, {})["gates"] == "n/a"
    assert candidate_row(active, {})["promotion"] == ""

    # The checks as the gates judged them, in their order, ok or FAIL with their figures.
    assert calm.status is not None and wide.status is not None
    checks = calm.status["gates"]["checks"]
    rows = gate_rows(calm.status)
    assert [r["check"] for r in rows] == [c["name"] for c in checks]
    assert [r["result"] for r in rows] == ["ok" if c["ok"] else "FAIL" for c in checks]
    assert [r["detail"] for r in rows] == [c["detail"] for c in checks]
    assert row["gates"] == ("PASS" if calm.status["gates"]["passed"] else "fail")
    # wide lost against a flat active: its Sharpe edge is negative, the default needs >= 0.
    assert candidate_row(wide, {})["gates"] == "fail"
    assert {"check": "sharpe", "result": "FAIL"}.items() <= gate_rows(wide.status)[2].items()
    assert gate_rows(active.status or {}) == []


def test_a_half_written_or_missing_file_is_named_and_the_rest_still_shows(
    tmp_path: Path,
) -> None:
    shadow = tmp_path / "shadow"
    write_candidate(shadow, ACTIVE, [START, START + 1], gates=False)
    write_candidate(shadow, "calm", [START, START + 5])
    write_candidate(shadow, "keen", [START, START + 2])
    (shadow / "quick").mkdir()  # started, not checked yet: no files at all
    status = shadow / "calm" / STATUS_FILE
    status.write_bytes(status.read_bytes()[:40])  # half written
    track = shadow / "keen" / TRACK_FILE
    track.write_text('{"bar_ts": [1, 2, 3], "equity": [1.0, 2.0]}')  # lengths differ
    found = {c.name: c for c in read_candidates(shadow)}

    calm = found["calm"]
    assert calm.status is None and len(calm.problems) == 1
    assert str(status) in calm.problems[0] and "unreadable" in calm.problems[0]
    assert calm.equity == [START, START + 5]  # its track still draws
    assert candidate_row(calm, {})["gates"] == "unreadable"
    assert candidate_row(calm, {})["ticks"] == ""  # no figure, not None or 0

    keen = found["keen"]
    assert keen.status is not None and keen.equity == []
    assert keen.problems == [f"{track} is unreadable (3 bar times but 2 equity values)"]

    quick = found["quick"]
    assert quick.status is None and quick.equity == []
    names = (STATUS_FILE, TRACK_FILE)
    assert all(str(shadow / "quick" / f) in p for p, f in zip(quick.problems, names, strict=True))
    assert all("not written yet" in p for p in quick.problems)

    assert not found[ACTIVE].problems

    # JSON of the wrong shape (not what the shadow writes): blanks, never a crash.
    odd = CandidateFiles("odd", {"gates": "x", "last_divergence": 3, "ticks": "many"})
    row = candidate_row(odd, {})
    assert (row["gates"], row["ticks"], row["last divergence"]) == ("n/a", "", "")
    assert gate_rows({"gates": {"checks": [1, None]}}) == []
    assert set(aligned(list(found.values()))) == {ACTIVE, "calm"}  # nothing to draw for two


bars = st.lists(st.integers(0, 200), unique=True, max_size=40).map(sorted)


@settings(max_examples=200, deadline=None)
@given(mine=bars, theirs=bars, data=st.data())
def test_the_curves_pair_on_the_bars_the_active_saw_as_the_gates_do(mine, theirs, data):
    """The page draws each candidate where the gates judge it: the runner's own pairing
    (``runner.paired``) and a numpy reference agree with ``aligned``."""

    def equity(n: int) -> list[float]:
        return data.draw(st.lists(st.floats(1e5, 2e6), min_size=n, max_size=n))

    cand = CandidateFiles("calm", None, mine, equity(len(mine)))
    ref = CandidateFiles(ACTIVE, None, theirs, equity(len(theirs)))
    curves = aligned([ref, cand])

    keep = np.isin(np.asarray(mine, dtype=np.int64), np.asarray(theirs, dtype=np.int64))
    expected_ts = np.asarray(mine, dtype=np.int64)[keep].tolist()
    expected_eq = np.asarray(cand.equity, dtype=np.float64)[keep].tolist()
    node = SimpleNamespace(bar_ts=mine, equity=cand.equity)
    active = SimpleNamespace(bar_ts=theirs, equity=ref.equity)
    paired_mine, paired_theirs = runner.paired(node, active)  # type: ignore[arg-type]
    if not theirs:  # no active track yet: the candidate is drawn as it is
        assert curves.get("calm", ([], [])) == (mine, cand.equity) and ACTIVE not in curves
    elif expected_ts:
        assert curves["calm"] == (expected_ts, expected_eq)
        assert curves["calm"][1] == paired_mine
        at = dict(zip(*curves[ACTIVE], strict=True))
        assert [at[t] for t in curves["calm"][0]] == paired_theirs
    else:
        assert "calm" not in curves and paired_mine == []
    assert (ACTIVE in curves) == bool(theirs)
    if theirs:
        assert curves[ACTIVE] == (theirs, ref.equity)
    # Without an active track, each curve is drawn as it is.
    alone = aligned([cand])
    assert alone.get("calm", ([], [])) == (mine, cand.equity)
