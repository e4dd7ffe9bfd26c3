"""`chimera live` on a damaged store prints one clean message naming it and exits non-zero
(a real subprocess, real garbage files)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("name", "named"),
    [("genome.db", "genome.db"), ("approvals.db", "approvals.db"), ("meta_risk.db", "paper")],
)
def test_a_damaged_governance_store_is_one_clean_message(tmp_path: Path, name, named) -> None:
    data = tmp_path / "data"
    (data / "paper").mkdir(parents=True)
    (data / "paper" / name).write_bytes(bytes(range(256)) * 32)
    config = tmp_path / "chimera.toml"
    config.write_text(
        f'data_dir = "{data}"\n[feed]\nurl = "ws://127.0.0.1:9/smart-stream"\n', encoding="utf-8"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHIMERA_")}
    proc = subprocess.run(
        [sys.executable, "-m", "tools.cli", "live", "--config", str(config),
         "--env-file", str(tmp_path / ".env")],
        cwd=tmp_path, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("chimera live: ") and named in last and "RUNBOOK" in last, last
