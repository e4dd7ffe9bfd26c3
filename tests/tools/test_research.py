"""`chimera research nightly` (the chimera-research.timer's job): refresh history from a
real `chimera sim` REST side, re-run the configured studies walk-forward, propose the
candidates whose guards pass, within the budget; what it did is in the night's summary."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from chimera_governance import approvals as apv
from chimera_governance.genome import CANDIDATE, GenomeView
from tests.loopback import REPO, start_order_sim
from tools.sim.orders import DEFAULT_CLIENT_CODE, DEFAULT_PASSWORD, DEFAULT_TOTP_SECRET

SAMPLE = REPO / "data" / "samples" / "sim_2885_5m.csv"
ENV = {
    "CHIMERA_API_KEY": "sim-api-key",
    "CHIMERA_CLIENT_CODE": DEFAULT_CLIENT_CODE,
    "CHIMERA_PASSWORD": DEFAULT_PASSWORD,
    "CHIMERA_TOTP_SECRET": DEFAULT_TOTP_SECRET,
}
STUDY = """
[[research.studies]]
name = "{name}"
data = ["{data}"]
trials = {trials}
generation = 8
unit = "days"
train = 10
test = 5
folds = 2
seed = 11
min_deflated_sharpe = {dsr}
max_pbo = 1.0
pbo_splits = 4
propose = {propose}
"""


async def _nightly(tmp: Path, config: str, date: str) -> tuple[int, dict]:
    path = tmp / "chimera.toml"
    path.write_text(config, encoding="utf-8")
    env = {**os.environ, **ENV, "PYTHONPATH": str(REPO), "NO_PROXY": "127.0.0.1"}
    env.pop("CHIMERA_CONFIG", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "research", "nightly", "--config", str(path),
        "--date", date, cwd=tmp, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(), 600)
    summary = tmp / "data" / "research" / f"nightly-{date.replace('-', '')}.json"
    assert summary.is_file(), err.decode()[-3000:]
    assert proc.returncode is not None
    return proc.returncode, json.loads(summary.read_text())


@pytest.mark.timeout(600)
async def test_a_night_refreshes_history_runs_the_studies_and_proposes_what_passed(
    tmp_path: Path,
) -> None:
    sim = await start_order_sim()
    try:
        fetched = tmp_path / "hist-2885.parquet"
        config = (
            f"""
data_dir = "{tmp_path / "data"}"
[execution.angelone]
rest_url = "{sim.rest_url}"
[research]
budget_s = 500
workers = 1
[[research.history]]
token = "2885"
interval = "FIVE_MINUTE"
days = 40
out = "{fetched}"
"""
            + STUDY.format(name="lax", data=SAMPLE, trials=24, dsr=0.0, propose="true")
            + STUDY.format(name="strict", data=SAMPLE, trials=24, dsr=1.0, propose="true")
            + STUDY.format(name="fresh", data=fetched, trials=8, dsr=0.0, propose="false")
        )
        code, night = await _nightly(tmp_path, config, "2024-03-01")
    finally:
        await sim.stop()
    (history,) = night["history"]
    assert history["outcome"] == "ok", history["stderr"]
    assert fetched.is_file()  # the refreshed series, which the third study read
    by_name = {s["study"]: s for s in night["studies"]}
    assert set(by_name) == {"lax-20240301", "strict-20240301", "fresh-20240301"}
    for s in by_name.values():
        assert s["outcome"] == "ok", (s["study"], s["stderr"])
    assert code == 0 and night["ok"]
    lax = by_name["lax-20240301"]
    assert "proposal" in lax, lax.get("not_proposed")
    proposal = lax["proposal"]
    assert "proposal" not in by_name["strict-20240301"]
    assert "deflated Sharpe" in by_name["strict-20240301"]["not_proposed"]
    assert "proposal" not in by_name["fresh-20240301"]  # propose = false
    state = tmp_path / "data" / "paper"
    with GenomeView(state / "genome.db") as view:
        cand = view.version("default", proposal["candidate_version"])
        assert cand.status == CANDIDATE and cand.source["study"] == "lax-20240301"
    queued = apv.proposals(state / "approvals.db")
    assert [(p["proposal_id"], p["status"]) for p in queued] == [
        (proposal["proposal_id"], "PENDING")
    ]


@pytest.mark.timeout(300)
async def test_a_study_past_the_budget_is_stopped_and_the_rest_skipped(tmp_path: Path) -> None:
    config = (
        f"""
data_dir = "{tmp_path / "data"}"
[research]
budget_s = 4
workers = 1
"""
        + STUDY.format(name="long", data=SAMPLE, trials=100_000, dsr=0.0, propose="true")
        + (STUDY.format(name="after", data=SAMPLE, trials=8, dsr=0.0, propose="true"))
    )
    code, night = await _nightly(tmp_path, config, "2024-03-02")
    outcomes = [(s["study"], s["outcome"]) for s in night["studies"]]
    assert outcomes == [("long-20240302", "over_budget"), ("after-20240302", "skipped_budget")]
    assert code == 1 and not night["ok"]
    assert not (tmp_path / "data" / "paper" / "approvals.db").exists()  # nothing proposed
