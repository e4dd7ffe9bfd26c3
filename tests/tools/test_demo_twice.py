"""`make demo` twice on one data dir, as a new user would run it: the second run trades
like the first (no intent refused as a duplicate of the first run's), because the
simulated market goes on to the next trading day instead of replaying the same one."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tomllib
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from chimera_execution.journal import Journal
from tests.loopback import REPO, free_port
from tools.demo import DEMO_CONFIG, clock_file
from tools.sim.market import Market
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(240)
IST = timezone(timedelta(hours=5, minutes=30))
RUN_S = 22.0  # per run, after the processes are up: the demo config warms in ~10 s


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return orjson.dumps(value).decode()  # a JSON string is a TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{_toml_value(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(f"no TOML for {value!r}")


def _toml(doc: dict[str, Any]) -> str:
    """The demo config's shape: top-level keys, then one level of tables."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in doc.items() if not isinstance(v, dict)]
    for name, table in doc.items():
        if isinstance(table, dict):
            lines.append(f"[{name}]")
            lines += [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


def _demo_config(tmp_path: Path) -> Path:
    """tools/demo.toml as is, on free ports and a data dir of the test's own."""
    doc = tomllib.loads(DEMO_CONFIG.read_text())
    doc["data_dir"] = str(tmp_path / "data")
    doc["feed"]["url"] = f"ws://127.0.0.1:{free_port()}/smart-stream"
    doc.setdefault("telemetry", {})["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
    doc.setdefault("control", {})["endpoint"] = f"tcp://127.0.0.1:{free_port()}"
    path = tmp_path / "demo.toml"
    path.write_text(_toml(doc))
    return path


def _run_demo(config: Path, log: Path) -> list[dict[str, Any]]:
    """One `make demo` (python -m tools.demo) for RUN_S seconds; the JSON log lines of all
    its processes (kept in ``log``)."""
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "DEMO_SECONDS": str(RUN_S),
        "DEMO_CORTEX_PORT": str(free_port()),
    }
    with log.open("wb") as out:
        done = subprocess.run(
            [sys.executable, "-m", "tools.demo", "--config", str(config)],
            cwd=config.parent,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=150,
        )
    text = log.read_text(errors="replace")
    assert done.returncode == 0, f"the demo exited {done.returncode}: {text[-3000:]}"
    events = []
    for line in text.splitlines():
        try:
            events.append(orjson.loads(line))
        except orjson.JSONDecodeError:
            continue  # the demo's own lines, the cortex's banner
    assert any(e.get("event") == "engine_stopped" for e in events), text[-3000:]
    return events


def _fills(data_dir: Path) -> list[tuple[str, int]]:
    with Journal.open_readonly(data_dir, "paper") as journal:
        return [(f.fill_id, f.exchange_ts_ms) for f in journal.fills()]


def _day(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, IST).date().isoformat()


def test_a_second_demo_run_trades_like_the_first(tmp_path):
    config = _demo_config(tmp_path)
    data_dir = tmp_path / "data"

    first = _run_demo(config, tmp_path / "demo1.log")
    first_fills = _fills(data_dir)
    second = _run_demo(config, tmp_path / "demo2.log")
    all_fills = _fills(data_dir)

    counts = [Counter(e.get("event") for e in run) for run in (first, second)]
    logs = [(tmp_path / f"demo{n}.log").read_text(errors="replace") for n in (1, 2)]
    assert "intent_duplicate" not in logs[0]
    duplicates = logs[1].count("intent_duplicate")
    assert duplicates == 0, f"the second run re-fired {duplicates} of the first run's intents"
    known = {fill_id for fill_id, _ in first_fills}
    new_fills = [(i, ts) for i, ts in all_fills if i not in known]
    assert len(first_fills) >= 4, f"the first run should trade: {counts[0]}"
    assert len(new_fills) >= len(first_fills) / 2, (
        f"the second run filled {len(new_fills)}, the first {len(first_fills)}"
    )
    # The market went on to a later trading day: no exchange time of the first run repeats.
    last_first = max(ts for _, ts in first_fills)
    assert min(ts for _, ts in new_fills) > last_first
    assert _day(min(ts for _, ts in new_fills)) > _day(last_first)
    for run in (first, second):
        listening = [e for e in run if e.get("event") == "sim_listening"]
        assert len(listening) == 1
    assert listening[0]["session_date"] > _day(last_first)
    assert clock_file(data_dir).is_file(), "the simulator should have saved its clock"


async def test_a_restarted_simulator_opens_on_the_next_trading_day(tmp_path):
    path = tmp_path / "sim" / "clock.json"
    first = ExchangeSimulator(port=0, rate=2000.0, order_side=False, clock_file=path)
    assert first.market is not None
    await first.start()
    await asyncio.sleep(0.3)
    await first.stop()
    saved = orjson.loads(path.read_bytes())["now_ms"]
    assert saved == first.market.now_ms > 0
    second = ExchangeSimulator(port=0, order_side=False, clock_file=path)
    assert second.market is not None
    day = datetime.fromtimestamp(saved / 1000, IST).date()
    expected = day + timedelta(days={4: 3, 5: 2}.get(day.weekday(), 1))  # Fri/Sat -> Mon
    assert second.market.session_date == expected
    assert second.market.next_tick().exchange_ts_ms > saved


def test_resuming_after_a_friday_opens_on_monday():
    friday = datetime(2024, 8, 16, 14, 0, tzinfo=IST)
    market = Market(seed=7, resume_after_ms=int(friday.timestamp() * 1000))
    assert market.session_date.isoformat() == "2024-08-19"
    # The seed's prices do not depend on the day it opens.
    assert Market(seed=7).next_tick().ltp == market.next_tick().ltp


@pytest.mark.parametrize("text", ["", "{", '{"now_ms": "soon"}', '{"now_ms": true}', "[]"])
def test_a_bad_clock_file_is_refused_by_name(tmp_path, text):
    path = tmp_path / "clock.json"
    path.write_text(text)
    with pytest.raises(ValueError, match=r"--clock-file .*clock\.json"):
        ExchangeSimulator(port=0, order_side=False, clock_file=path)
