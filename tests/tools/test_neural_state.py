"""data/neural_state.json carries every layer of the brain: the recorder, as a real process
on a real ZeroMQ socket, fed the decisions of an engine with governance and fills, writes
each layer's latest output per symbol with the seq of the decision that carried it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import (
    Decision,
    ExecKind,
    ExecutionReport,
    Fill,
    Mode,
    OrderIntent,
    Purpose,
)
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import TOPIC_SESSION, TelemetryPublisher
from chimera_governance.pipeline import GovernancePipeline
from tests.loopback import REPO
from tools.sim.market import Market

pytestmark = pytest.mark.timeout(120)
LAYERS = ("drift", "capital", "meta_risk", "genome", "approval", "execution")
# Fast bars so the layers warm within a few thousand frames; approvals asked of a human
# for intents below 0.4 confidence, so approval outputs differ from intent to intent.
CFG = """
[strategy]
bar_interval_s = 5
energy_threshold = 0.006
[logging]
decisions = "none"
[governance]
approval_min_confidence = 0.4
"""


@pytest.fixture
def recorder(tmp_path: Path) -> Iterator[Callable[[str], subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    conf = tmp_path / "rec.toml"
    conf.write_text("[recorder]\nneural_state_interval_s = 0.02\n")

    def start(endpoint: str) -> subprocess.Popen[bytes]:
        cmd = [sys.executable, "-m", "tools.record", "--config", str(conf)]
        cmd += ["--data-dir", str(tmp_path / "data"), "--endpoint", endpoint]
        with open(tmp_path / f"recorder{len(procs)}.log", "wb") as log:
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=log)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait(cond: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _filled(intent: OrderIntent, ts_ms: int) -> ExecutionReport:
    """The broker's answer to an entry: filled in full at the reference price."""
    coid = f"{intent.client_order_id}-1"
    fill = Fill(f"{coid}-f", coid, intent.token, intent.side, intent.qty, intent.ref_price,
                20.0, ts_ms)  # fmt: skip
    return ExecutionReport(
        kind=ExecKind.FILLED, client_order_id=coid, intent_id=intent.client_order_id,
        token=intent.token, side=intent.side, order_qty=intent.qty, filled_qty=intent.qty,
        avg_price=intent.ref_price, purpose=Purpose.ENTRY, fill=fill, final=True,
        exchange_ts_ms=ts_ms,
    )  # fmt: skip


def _drive(
    recorder: Callable[[str], subprocess.Popen[bytes]],
    engine: Engine,
    frames: int,
    fill_every: int = 0,
) -> tuple[dict[str, Decision], dict[str, dict[str, Decision]], subprocess.Popen[bytes]]:
    """Publish ``frames`` ticks' decisions to a recorder; every ``fill_every``-th intent is
    filled. The last decision per token, and per token and layer the last decision that
    carried that layer."""
    pub = TelemetryPublisher("tcp://127.0.0.1:*", hwm=1_000_000)
    proc = recorder(pub.endpoint)

    def subscribed() -> bool:
        pub.drain_subscriptions()
        return pub.subscriptions > 0

    _wait(subscribed, "the recorder's subscription")
    pub.publish(TOPIC_SESSION, session_info(engine.cfg))
    market = Market(seed=5)
    last: dict[str, Decision] = {}
    carried: dict[str, dict[str, Decision]] = {}
    intents = 0
    for i in range(frames):
        frame = encode(market.next_tick(Mode.QUOTE))
        recv_ns = (i + 1) * 50_000
        d = engine.on_frame(frame, recv_ns)
        pub.tick(frame, recv_ns, d)
        if d is None:
            continue
        last[d.token] = d
        for name in LAYERS:
            if getattr(d, name) is not None:
                carried.setdefault(d.token, {})[name] = d
        if d.intent is not None:
            intents += 1
            if fill_every and intents % fill_every == 0:
                engine.on_report(_filled(d.intent, d.exchange_ts_ms))
    assert pub.dropped == 0
    pub.close()
    return last, carried, proc


def _caught_up(path: Path, last: dict[str, Decision]) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        try:
            state = orjson.loads(path.read_bytes())
        except (FileNotFoundError, orjson.JSONDecodeError):
            return None
        symbols = state["symbols"]
        done = all(symbols.get(t, {}).get("seq") == d.seq for t, d in last.items())
        return state if done else None

    return check


def _json(output: msgspec.Struct) -> Any:
    """An output as the file holds it (JSON: enums as values, NaN as null)."""
    return orjson.loads(orjson.dumps(msgspec.to_builtins(output)))


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 0


def test_every_layer_is_the_last_decision_that_carried_it(tmp_path, recorder):
    cfg = parse_config(CFG)
    gov = GovernancePipeline(cfg, tmp_path / "gov")
    engine = Engine(cfg, governance=gov, clock=lambda: 0)
    last, carried, proc = _drive(recorder, engine, 12_000, fill_every=2)
    gov.close()
    state = _wait(_caught_up(tmp_path / "data" / "neural_state.json", last), "the last decision")
    _stop(proc)

    assert set(state["symbols"]) == set(cfg.feed.tokens) == set(carried)
    older = 0  # layers whose last output came before the symbol's last decision
    for token, by_layer in carried.items():
        s = state["symbols"][token]
        assert set(by_layer) == set(LAYERS), f"{token}: some layer never spoke"
        for name, d in by_layer.items():
            output = getattr(d, name)
            assert s[name] == {"seq": d.seq, **_json(output)}, f"{token} {name}"
            older += d.seq < last[token].seq
        # The values people look for, field by field.
        assert s["drift"]["regime"] == by_layer["drift"].drift.regime.value
        assert s["capital"]["target_leverage"] == by_layer["capital"].capital.target_leverage
        assert s["genome"]["version"] == by_layer["genome"].genome.version
        assert s["approval"]["status"] == by_layer["approval"].approval.status
        meta = by_layer["meta_risk"].meta_risk
        assert s["meta_risk"]["allowed"] == meta.allowed
        assert [v["rule"] for v in s["meta_risk"]["vetoes"]] == [v.rule for v in meta.vetoes]
        assert s["execution"]["position_qty"] == last[token].execution.position_qty
        # The physics and state machine keys the file always had are still there.
        assert s["seq"] == last[token].seq and s["state"] == last[token].state
        assert s["price"] == last[token].physics.close
    # meta-risk and approval speak only when a signal is about to fire: their outputs come
    # from earlier decisions than the last, and must not be blanked by it.
    assert older >= len(carried)
    assert any(s["execution"]["position_qty"] != 0 for s in state["symbols"].values())


def test_layers_that_never_ran_are_null_not_invented(tmp_path, recorder):
    cfg = parse_config(CFG + "enabled = false\n")  # [governance] enabled = false
    assert not cfg.governance.enabled
    engine = Engine(cfg, clock=lambda: 0)
    last, carried, proc = _drive(recorder, engine, 2_000)
    state = _wait(_caught_up(tmp_path / "data" / "neural_state.json", last), "the last decision")
    _stop(proc)
    for token, d in last.items():
        assert set(carried[token]) == {"execution"}
        s = state["symbols"][token]
        for name in ("drift", "capital", "meta_risk", "genome", "approval"):
            assert s[name] is None, f"{token} {name}"
        # Execution is wired (paper), so it speaks on every decision.
        assert s["execution"] == {"seq": d.seq, **_json(d.execution)}
