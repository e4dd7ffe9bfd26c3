"""`chimera mcp` with the SDK's own clients against a real `chimera live` trading the
simulator (real processes, loopback only)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from chimera_core.config import load_config
from chimera_core.control import ControlClient, read_token
from chimera_governance.approvals import proposals
from tests.loopback import REPO, chimera, free_port, wait_port

pytestmark = pytest.mark.timeout(90)

# Words no tool name may contain: the server never trades.
ORDER_WORDS = ("order_place", "place", "cancel", "flatten", "buy", "sell", "submit", "approve")


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    tmp = tmp_path_factory.mktemp("mcp")
    sim_port, tel_port, ctl_port = free_port(), free_port(), free_port()
    (tmp / "chimera.toml").write_text(
        f'data_dir = "{tmp / "data"}"\n'
        f'[feed]\nurl = "ws://127.0.0.1:{sim_port}/smart-stream"\nmode = "SNAP_QUOTE"\n'
        '[logging]\ndecisions = "none"\n'
        f'[telemetry]\nendpoint = "tcp://127.0.0.1:{tel_port}"\nhealth_interval_s = 0.5\n'
        "wait_for_subscriber_s = 20\n"
        f'[control]\nendpoint = "tcp://127.0.0.1:{ctl_port}"\n'
    )
    procs = [chimera("sim", "--port", str(sim_port), "--rate", "500", cwd=tmp)]
    try:
        wait_port(sim_port)
        procs.append(chimera("record", cwd=tmp))  # the black box explain reads
        procs.append(chimera("live", cwd=tmp))
        deadline = time.monotonic() + 40
        while True:  # the engine answers on the control channel once it is up
            try:
                _control(tmp, "status")
                break
            except Exception:
                assert procs[2].poll() is None, procs[2].output()[1].decode()[-2000:]
                assert time.monotonic() < deadline, "the engine never answered status"
                time.sleep(0.5)
        yield tmp
    finally:
        _stop(procs)


def _control(tmp: Path, command: str) -> dict[str, Any]:
    cfg = load_config(tmp / "chimera.toml")
    token = read_token({}, Path(cfg.data_dir))
    with ControlClient(cfg.control.endpoint, token, 2.0) as c:
        return c.request(command)


def _stdio(tmp: Path) -> Client:
    return Client(
        StdioServerParameters(
            command=sys.executable,
            args=["-m", "tools.cli", "mcp", "--config", str(tmp / "chimera.toml")],
            cwd=str(tmp),
            env={"PYTHONPATH": str(REPO)},
        )
    )


def _stable(status: dict[str, Any]) -> dict[str, Any]:
    r = status["result"]
    return {k: r[k] for k in ("halted", "states") if k in r} | {"ok": status["ok"]}


def test_stdio_tools_read_the_engine_and_only_make_it_safer(engine: Path) -> None:
    async def run() -> None:
        async with _stdio(engine) as client:
            names = {t.name for t in (await client.list_tools()).tools}
            assert {"status", "positions", "pause", "halt", "propose_genome_change"} <= names
            assert not [n for n in names if any(w in n.lower() for w in ORDER_WORDS)], names

            got = (await client.call_tool("status", {})).structured_content
            assert got is not None
            want = _control(engine, "status")
            assert got["command"] == want["command"] == "status"
            assert _stable(got) == _stable(want)
            assert set(got["result"]) == set(want["result"])

            assert want["result"]["paused"] is False
            res = await client.call_tool("pause", {"reason": "test"})
            assert not res.is_error, res
            after = _control(engine, "status")["result"]
            assert after["paused"] is True and after["halted"] is False, after

            res = await client.call_tool(
                "propose_genome_change",
                {"family": "physics", "params": {"energy_threshold": 0.01}, "reason": "test"},
            )
            assert not res.is_error, res
            pid = res.structured_content["proposal_id"]  # type: ignore[index]
            mode_dir = engine / "data" / load_config(engine / "chimera.toml").mode
            queued = proposals(mode_dir / "approvals.db")
            assert [(p["proposal_id"], p["status"], p["proposed_by"]) for p in queued] == [
                (pid, "PENDING", "assistant")
            ]
            assert queued[0]["payload"] == {
                "family": "physics",
                "params": {"energy_threshold": 0.01},
            }

            uris = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "chimera://docs/README.md" in uris and "chimera://config/schema" in uris

    anyio.run(run)


def test_http_refuses_a_wrong_token_and_serves_the_right_one(engine: Path) -> None:
    port = free_port()
    proc = chimera("mcp", "--config", "chimera.toml", "--http", "--port", str(port), cwd=engine)
    try:
        wait_port(port)
        url = f"http://127.0.0.1:{port}/mcp"
        for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789abcdef"}):
            req = urllib.request.Request(url, data=b"{}", headers=headers, method="POST")
            with pytest.raises(urllib.error.HTTPError) as err:
                urllib.request.urlopen(req, timeout=5)
            assert err.value.code == 401
        token = read_token({}, engine / "data")

        async def run() -> dict[str, Any]:
            http = httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"})
            async with http, Client(streamable_http_client(url, http_client=http)) as client:
                res = await client.call_tool("status", {})
                assert res.structured_content is not None
                return res.structured_content

        got = anyio.run(run)
        assert got["ok"] is True and got["command"] == "status"
    finally:
        _stop([proc])


def test_recent_decisions_and_explain_match_the_black_box(engine: Path) -> None:
    from cortex.sources import load_session, sessions

    deadline = time.monotonic() + 30
    while True:  # the recorder flushes its segment in batches
        found = sessions(engine / "data")
        box = load_session(Path(found[0]["path"]), max_points=10**9) if found else None
        if box and box["prices"]:
            break
        assert time.monotonic() < deadline, "no decision reached the black box"
        time.sleep(1.0)
    token = sorted(box["prices"])[0]

    async def run() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        async with _stdio(engine) as client:
            res = await client.call_tool("recent_decisions", {"token": token, "n": 5})
            assert not res.is_error, res
            recent = res.structured_content["result"]  # type: ignore[index]
            last = recent[-1]
            res = await client.call_tool(
                "explain", {"session": last["session"], "seq": last["seq"]}
            )
            assert not res.is_error, res
            return recent, res.structured_content  # type: ignore[return-value]

    recent, explained = anyio.run(run)
    assert 1 <= len(recent) <= 5
    # Read after the tools did: the recorder keeps appending while the engine runs.
    box = load_session(Path(found[0]["path"]), max_points=10**9)
    recorded = set(map(tuple, box["prices"][token]))
    # Each summary is a decision the black box holds (an independent reader: the cortex's).
    assert {(d["exchange_ts_ms"], d["close"]) for d in recent} <= recorded
    assert explained["token"] == token
    assert explained["exchange_ts_ms"] == recent[-1]["exchange_ts_ms"]
    assert explained["physics"]["close"] == recent[-1]["close"]
    assert {"physics", "meta_risk", "intent"} <= set(explained)
