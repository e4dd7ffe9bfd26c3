"""The SmartAPI v2 exchange simulator over real sockets on 127.0.0.1 (ephemeral ports)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from chimera_core.contracts import ExchangeType, Mode, Tick
from chimera_core.errors import ProtocolError
from chimera_core.feed.smartapi_v2 import PACKET_SIZE, decode, encode
from chimera_core.tickfile import TickFileReader, TickFileWriter
from tools.sim.market import Market
from tools.sim.server import ExchangeSimulator, Faults

pytestmark = pytest.mark.timeout(30)

HEADERS = {
    "Authorization": "Bearer FAKE.JWT",
    "x-api-key": "fake_api_key",
    "x-client-code": "A1234567",
    "x-feed-token": "fake_feed_token",
}
TOKENS = ("2885", "1594", "3045")
REPO = Path(__file__).resolve().parents[2]


async def _sim(**kwargs: Any) -> ExchangeSimulator:
    sim = ExchangeSimulator(port=0, **kwargs)
    await sim.start()
    return sim


@pytest.fixture
async def sim() -> AsyncIterator[ExchangeSimulator]:
    server = await _sim(rate=1000.0)
    yield server
    await server.stop()


def _connect(url: str, **headers: str) -> Any:
    return connect(url, additional_headers={**HEADERS, **headers}, compression=None, open_timeout=5)


def _request(
    mode: int, tokens: list[str] | tuple[str, ...], action: int = 1, exchange_type: int = 1
) -> str:
    return json.dumps(
        {
            "correlationID": "corr123456",
            "action": action,
            "params": {
                "mode": mode,
                "tokenList": [{"exchangeType": exchange_type, "tokens": list(tokens)}],
            },
        }
    )


async def _frames(ws: ClientConnection, n: int, timeout: float = 5.0) -> list[bytes]:
    """The next n binary frames (text frames are skipped)."""
    out: list[bytes] = []
    async with asyncio.timeout(timeout):
        while len(out) < n:
            message = await ws.recv()
            if isinstance(message, bytes):
                out.append(message)
    return out


async def _text(ws: ClientConnection, timeout: float = 5.0) -> str:
    """The next text frame; binary frames before it are discarded."""
    async with asyncio.timeout(timeout):
        while True:
            message = await ws.recv()
            if isinstance(message, str):
                return message


async def _frames_until_pong(ws: ClientConnection) -> list[bytes]:
    """Send a text ping and return every binary frame that arrives before the pong."""
    await ws.send("ping")
    out = []
    async with asyncio.timeout(5):
        while True:
            message = await ws.recv()
            if message == "pong":
                return out
            assert isinstance(message, bytes)
            out.append(message)


# -- handshake -------------------------------------------------------------------------


@pytest.mark.parametrize("header", list(HEADERS))
async def test_upgrade_without_a_header_is_401(sim: ExchangeSimulator, header: str) -> None:
    for value in (None, ""):
        headers = {k: v for k, v in HEADERS.items() if k != header}
        if value is not None:
            headers[header] = value
        with pytest.raises(InvalidStatus) as failed:
            async with connect(sim.url, additional_headers=headers):
                pass
        assert failed.value.response.status_code == 401


async def test_upgrade_on_another_path_is_404(sim: ExchangeSimulator) -> None:
    with pytest.raises(InvalidStatus) as failed:
        async with _connect(f"ws://127.0.0.1:{sim.port}/other-stream"):
            pass
    assert failed.value.response.status_code == 404


async def test_ephemeral_port_is_reported_and_bound_to_loopback(sim: ExchangeSimulator) -> None:
    assert sim.port != 0 and sim.url == f"ws://127.0.0.1:{sim.port}/smart-stream"


# -- subscriptions ---------------------------------------------------------------------


@pytest.mark.parametrize("mode", list(Mode))
async def test_subscribed_tokens_arrive_in_the_requested_mode(
    sim: ExchangeSimulator, mode: Mode
) -> None:
    async with _connect(sim.url) as ws:
        await ws.send(_request(mode, ["2885", "1594"]))
        frames = await _frames(ws, 40)
    ticks = [decode(f) for f in frames]
    assert all(len(f) == PACKET_SIZE[mode] for f in frames)
    assert {t.mode for t in ticks} == {mode}
    assert {t.token for t in ticks} == {"2885", "1594"}  # never the unsubscribed 3045
    assert {t.exchange_type for t in ticks} == {1}


async def test_unsubscribe_stops_that_token_only(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as ws:
        await ws.send(_request(Mode.QUOTE, TOKENS))
        before = {decode(f).token for f in await _frames(ws, 30)}
        assert before == set(TOKENS)
        await ws.send(_request(Mode.QUOTE, ["2885"], action=0))
        await _frames_until_pong(ws)  # replies queue behind ticks: all later frames are new
        after = [decode(f).token for f in await _frames(ws, 60)]
    assert "2885" not in after and set(after) == {"1594", "3045"}


async def test_a_token_in_two_modes_gets_both_packets_per_tick(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as ws:
        await ws.send(_request(Mode.LTP, ["3045"]))
        await ws.send(_request(Mode.QUOTE, ["3045"]))
        await _frames_until_pong(ws)
        ticks = [decode(f) for f in await _frames(ws, 40)]
    by_mode: dict[int, list[int]] = defaultdict(list)
    for tick in ticks:
        by_mode[tick.mode].append(tick.sequence)
    common = set(by_mode[Mode.LTP]) & set(by_mode[Mode.QUOTE])
    assert len(common) >= 15


async def test_text_ping_gets_text_pong(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as ws:
        await ws.send("ping")
        assert await ws.recv() == "pong"


BAD_REQUESTS = [
    ("not json", "E1001"),
    ("[1, 2]", "E1001"),
    (json.dumps({"correlationID": "corr123456", "action": 1}), "E1001"),
    (_request(Mode.QUOTE, TOKENS, action=5), "E1002"),
    (_request(7, TOKENS), "E1002"),
    (
        json.dumps(
            {
                "correlationID": "corr123456",
                "action": 1,
                "params": {"mode": True, "tokenList": [{"exchangeType": 1, "tokens": ["2885"]}]},
            }
        ),
        "E1002",
    ),
    (_request(Mode.QUOTE, TOKENS, exchange_type=6), "E1003"),
    (
        json.dumps(
            {
                "correlationID": "corr123456",
                "action": 1,
                "params": {"mode": 2, "tokenList": [{"exchangeType": 1, "tokens": [2885]}]},
            }
        ),
        "E1003",
    ),
    (_request(Mode.QUOTE, ["99999"]), "E1004"),
    (_request(Mode.QUOTE, TOKENS, exchange_type=3), "E1004"),  # known token, wrong segment
    (_request(Mode.DEPTH, ["2885"], exchange_type=2), "E1006"),
]


async def test_bad_requests_get_an_error_frame_and_the_connection_stays_open(
    sim: ExchangeSimulator,
) -> None:
    async with _connect(sim.url) as ws:
        for request, code in BAD_REQUESTS:
            await ws.send(request)
            reply = json.loads(await _text(ws))
            assert reply["errorCode"] == code, (request, reply)
            assert reply["errorMessage"]
            if code != "E1001" or "correlationID" in request:
                assert reply["correlationID"] == "corr123456"
        assert await _frames_until_pong(ws) == []  # nothing got subscribed
        await ws.send(_request(Mode.LTP, ["2885"]))
        assert decode((await _frames(ws, 1))[0]).token == "2885"


async def test_unknown_tokens_are_reported_and_known_ones_still_subscribed(
    sim: ExchangeSimulator,
) -> None:
    async with _connect(sim.url) as ws:
        await ws.send(_request(Mode.LTP, ["2885", "424242"]))
        reply = json.loads(await _text(ws))
        assert reply["errorCode"] == "E1004" and "424242" in reply["errorMessage"]
        assert {decode(f).token for f in await _frames(ws, 10)} == {"2885"}


async def test_token_limits_per_connection_and_for_depth() -> None:
    many = tuple(str(10_000 + i) for i in range(1001))
    server = await _sim(rate=50.0, tokens=many)
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.DEPTH, many[:51]))
            assert json.loads(await _text(ws))["errorCode"] == "E1006"
            await ws.send(_request(Mode.DEPTH, many[:50]))
            await ws.send(_request(Mode.LTP, many[50:1000]))
            await ws.send(_request(Mode.LTP, many[1000:]))
            assert json.loads(await _text(ws))["errorCode"] == "E1005"
            await ws.send(_request(Mode.LTP, many[50:52], action=0))
            await ws.send(_request(Mode.LTP, many[1000:]))  # room again after unsubscribing
            await ws.send("ping")
            assert await _text(ws) == "pong"  # no error: 998 + 1 is within the limit
    finally:
        await server.stop()


async def test_fourth_connection_of_a_client_code_is_closed(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as a, _connect(sim.url) as b, _connect(sim.url) as c:
        async with _connect(sim.url) as fourth:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(fourth.recv(), 5)
            assert fourth.close_code == 1008
        async with _connect(sim.url, **{"x-client-code": "B7654321"}) as other:
            await other.send("ping")
            assert await other.recv() == "pong"
        for ws in (a, b, c):
            await ws.send("ping")
            assert await ws.recv() == "pong"
    async with _connect(sim.url) as again:  # the three closed: a new one is welcome
        await again.send("ping")
        assert await again.recv() == "pong"


async def test_all_connections_see_the_same_market(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as a, _connect(sim.url) as b:
        await a.send(_request(Mode.SNAP_QUOTE, ["1594"]))
        await b.send(_request(Mode.SNAP_QUOTE, ["1594"]))
        frames_a = {decode(f).sequence: f for f in await _frames(a, 30)}
        frames_b = {decode(f).sequence: f for f in await _frames(b, 30)}
    common = set(frames_a) & set(frames_b)
    assert len(common) >= 20
    assert all(frames_a[s] == frames_b[s] for s in common)


async def test_market_runs_on_while_nobody_listens(sim: ExchangeSimulator) -> None:
    async with _connect(sim.url) as ws:
        await ws.send(_request(Mode.LTP, ["2885"]))
        first = decode((await _frames(ws, 5))[-1]).sequence
    await asyncio.sleep(0.3)
    async with _connect(sim.url) as ws:
        await ws.send(_request(Mode.LTP, ["2885"]))
        resumed = decode((await _frames(ws, 1))[0]).sequence
    # 1000 ticks/s over three tokens: ~100 sequence numbers of 2885 went by unseen.
    assert resumed - first > 50


# -- faults ----------------------------------------------------------------------------


async def test_drop_alternates_clean_close_and_abort() -> None:
    server = await _sim(rate=500.0, faults=Faults(drop_every_s=0.3))
    try:
        outcomes = []
        for _ in range(2):
            async with _connect(server.url) as ws:
                await ws.send(_request(Mode.LTP, TOKENS))
                opened = time.monotonic()
                with pytest.raises(ConnectionClosed) as closed:
                    async with asyncio.timeout(5):
                        while True:
                            await ws.recv()
                lived = time.monotonic() - opened
                assert 0.2 < lived < 2.0
                received = closed.value.rcvd
                outcomes.append(None if received is None else received.code)
        assert outcomes == [1000, None]  # clean close, then no close frame at all
        assert isinstance(closed.value, ConnectionClosedError)
    finally:
        await server.stop()


async def _stream(faults: Faults, mode: int, n: int, seed: int = 7) -> list[bytes]:
    server = await _sim(rate=3000.0, faults=faults, seed=seed)
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(mode, TOKENS))
            return await _frames(ws, n)
    finally:
        await server.stop()


def _decoded(frames: list[bytes]) -> tuple[list[Tick], int]:
    ticks, bad = [], 0
    for frame in frames:
        try:
            ticks.append(decode(frame))
        except ProtocolError:
            bad += 1
    return ticks, bad


async def test_malformed_frames_are_injected_and_nothing_else_breaks() -> None:
    clean, bad = _decoded(await _stream(Faults(), Mode.QUOTE, 300))
    assert bad == 0 and len(clean) == 300
    ticks, bad = _decoded(await _stream(Faults(malformed_p=0.2), Mode.QUOTE, 600))
    assert 60 <= bad <= 200  # p=0.2 of ~550 ticks offered
    assert len(ticks) + bad == 600 and len(ticks) > 300


async def test_duplicate_frames_repeat_a_sequence_number() -> None:
    frames = await _stream(Faults(duplicate_p=0.2), Mode.QUOTE, 600)
    ticks, bad = _decoded(frames)
    assert bad == 0
    last: dict[str, int] = {}
    duplicates = 0
    for tick in ticks:
        previous = last.get(tick.token)
        if previous is not None:
            assert tick.sequence in (previous, previous + 1)
            duplicates += tick.sequence == previous
        last[tick.token] = tick.sequence
    assert 50 <= duplicates <= 170


async def test_out_of_order_swaps_neighbouring_frames_of_a_token() -> None:
    ticks, bad = _decoded(await _stream(Faults(out_of_order_p=0.2), Mode.LTP, 600))
    assert bad == 0
    per_token: dict[str, list[int]] = defaultdict(list)
    for tick in ticks:
        per_token[tick.token].append(tick.sequence)
    swaps = 0
    for seqs in per_token.values():
        swaps += sum(b < a for a, b in itertools.pairwise(seqs))
        ordered = sorted(seqs)
        assert ordered == list(range(ordered[0], ordered[0] + len(ordered)))  # none lost
        # A swap is with the neighbour only: no frame is more than one place off.
        assert all(abs(seq - (ordered[0] + i)) <= 1 for i, seq in enumerate(seqs))
    assert swaps >= 30


async def test_faults_are_deterministic_for_a_seed() -> None:
    # Which frames get garbled depends only on the seed and the frames offered.
    faults = Faults(malformed_p=0.3, duplicate_p=0.2)

    def shape(frames: list[bytes]) -> list[bool]:
        ticks = []
        for frame in frames:
            try:
                decode(frame)
                ticks.append(True)
            except ProtocolError:
                ticks.append(False)
        return ticks

    first = shape(await _stream(faults, Mode.QUOTE, 200, seed=5))
    second = shape(await _stream(faults, Mode.QUOTE, 200, seed=5))
    assert first == second


async def test_stall_goes_quiet_without_closing_then_resumes() -> None:
    server = await _sim(rate=1000.0, faults=Faults(stall_after_s=0.3, stall_for_s=0.6))
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.LTP, ["2885"]))
            arrivals: list[tuple[float, int]] = []
            async with asyncio.timeout(5):
                while not arrivals or arrivals[-1][0] - arrivals[0][0] < 1.0:
                    frame = await ws.recv()
                    if isinstance(frame, bytes):
                        arrivals.append((time.monotonic(), decode(frame).sequence))
            await ws.send("ping")
            assert await _text(ws) == "pong"  # still connected
    finally:
        await server.stop()
    gaps = [(b[0] - a[0], b[1] - a[1]) for a, b in itertools.pairwise(arrivals)]
    longest, skipped = max(gaps)
    assert 0.45 < longest < 0.9
    assert skipped > 100  # the market kept ticking during the stall (~200 ticks of 2885)


# -- replay and record -----------------------------------------------------------------


def _write_tick_file(path: Path) -> list[bytes]:
    market = Market(TOKENS, seed=13)
    frames = []
    for i in range(400):
        # Mostly QUOTE; every 10th frame an LTP packet the QUOTE client must not see.
        frames.append(encode(market.next_tick(Mode.LTP if i % 10 == 9 else Mode.QUOTE)))
    with TickFileWriter(path) as writer:
        for i, frame in enumerate(frames):
            writer.write(i * 1000, frame)
    return frames


@pytest.mark.parametrize("rate", [0.0, 5000.0], ids=["flood", "paced"])
async def test_replay_serves_the_exact_bytes_of_a_tick_file(tmp_path: Path, rate: float) -> None:
    path = tmp_path / "session.chtick"
    frames = _write_tick_file(path)
    wanted = [f for f in frames if f[0] == Mode.QUOTE]
    server = await _sim(rate=rate, replay=path)
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.QUOTE, TOKENS))
            got = await _frames(ws, len(wanted))
            await asyncio.wait_for(server.replay_done.wait(), 5)
            assert await _frames_until_pong(ws) == []  # stops at the end of the file
    finally:
        await server.stop()
    assert got == wanted


async def test_replay_skips_tokens_nobody_subscribed(tmp_path: Path) -> None:
    path = tmp_path / "session.chtick"
    frames = _write_tick_file(path)
    server = await _sim(rate=0.0, replay=path)
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.LTP, ["1594"]))
            await asyncio.wait_for(server.replay_done.wait(), 5)
            got = await _frames_until_pong(ws)
            await ws.send(_request(Mode.QUOTE, ["7777"]))
            assert json.loads(await _text(ws))["errorCode"] == "E1004"  # not in the file
    finally:
        await server.stop()
    expected = [f for f in frames if f[0] == Mode.LTP and decode(f).token == "1594"]
    assert got == expected and len(expected) > 5


async def test_record_sent_equals_what_the_client_received(tmp_path: Path) -> None:
    path = tmp_path / "sent.chtick"
    server = await _sim(
        rate=2000.0, record_sent=path, faults=Faults(malformed_p=0.05, duplicate_p=0.05)
    )
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.SNAP_QUOTE, TOKENS))
            received = await _frames(ws, 400)
    finally:
        await server.stop()
    recorded = [frame for _, frame in TickFileReader(path)]
    assert len(recorded) >= len(received)
    assert recorded[: len(received)] == received
    assert any(len(f) != PACKET_SIZE[Mode.SNAP_QUOTE] for f in received)  # faults recorded too


async def test_achieved_rate_is_within_15_percent_of_2000_per_second() -> None:
    server = await _sim(rate=2000.0)
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request(Mode.QUOTE, TOKENS))
            await _frames(ws, 200)  # warm up
            count = 0
            started = time.monotonic()
            async with asyncio.timeout(10):
                while time.monotonic() - started < 2.0:
                    if isinstance(await ws.recv(), bytes):
                        count += 1
            achieved = count / (time.monotonic() - started)
    finally:
        await server.stop()
    assert 1700 <= achieved <= 2300, achieved


# -- command line ----------------------------------------------------------------------


async def test_cli_listens_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    record = tmp_path / "cli.chtick"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", "import sys; from tools.sim.server import main; sys.exit(main())",
        "--port", "0", "--rate", "500", "--seed", "3", "--tokens", "2885,1594",
        "--record-sent", str(record),
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stderr.readline()
                assert line, "simulator exited before listening"
                try:
                    event = json.loads(line)
                except ValueError:
                    continue  # not a structlog line
                if isinstance(event, dict) and event.get("event") == "sim_listening":
                    break
        url = event["url"]
        assert url.startswith("ws://127.0.0.1:") and url.endswith("/smart-stream")
        async with _connect(url) as ws:
            await ws.send(_request(Mode.LTP, ["1594"]))
            assert {decode(f).token for f in await _frames(ws, 5)} == {"1594"}
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 10)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    assert b'"sim_stopped"' in err
    assert len(list(TickFileReader(record))) >= 5


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.20", "example.com"])
def test_cli_refuses_a_non_loopback_host_without_allow_remote(host: str) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "sim", "--host", host, "--port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert host in done.stderr and "--allow-remote" in done.stderr
    assert "sim_listening" not in done.stderr


async def test_cli_binds_a_non_loopback_host_with_allow_remote() -> None:
    # 0.0.0.0 is the wildcard bind; --allow-remote says the operator means it. The loopback
    # address is reachable through it, which is all this machine allows.
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "sim", "--host", "0.0.0.0", "--allow-remote",
        "--port", "0", "--no-orders", "--tokens", "2885",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    seen: list[bytes] = []
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stderr.readline()
                assert line, "simulator exited before listening"
                seen.append(line)
                if b'"sim_listening"' in line:
                    event = json.loads(line)
                    break
        # The operator is told, once, that every interface is served.
        warned = [json.loads(x) for x in seen if b'"sim_remote_bind"' in x]
        assert len(warned) == 1 and warned[0]["host"] == "0.0.0.0"
        assert warned[0]["level"] == "warning"
        port = event["url"].rsplit(":", 1)[1].split("/")[0]
        async with _connect(f"ws://127.0.0.1:{port}/smart-stream") as ws:
            await ws.send(_request(Mode.LTP, ["2885"]))
            assert {decode(f).token for f in await _frames(ws, 2)} == {"2885"}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)


# -- several segments on one feed ------------------------------------------------------

NIFTY_FUT = "35006"  # NIFTY26DEC24FUT in tools/sim/master.py (lot 75, tick ₹0.10)


def _request_many(mode: int, token_list: list[tuple[int, list[str]]], action: int = 1) -> str:
    return json.dumps(
        {
            "correlationID": "corr123456",
            "action": action,
            "params": {
                "mode": mode,
                "tokenList": [{"exchangeType": e, "tokens": t} for e, t in token_list],
            },
        }
    )


@pytest.mark.parametrize("mode", [Mode.LTP, Mode.QUOTE, Mode.SNAP_QUOTE])
async def test_one_sim_serves_cash_and_fo_tokens_on_one_connection(mode: Mode) -> None:
    server = await _sim(rate=1000.0, tokens=["2885", "1594", (ExchangeType.NSE_FO, NIFTY_FUT)])
    try:
        async with _connect(server.url) as ws:
            await ws.send(_request_many(mode, [(1, ["2885"]), (2, [NIFTY_FUT])]))
            frames = await _frames(ws, 60)
    finally:
        await server.stop()
    ticks = [decode(f) for f in frames]
    assert all(len(f) == PACKET_SIZE[mode] for f in frames)
    # The exchange-type byte of each packet is its instrument's segment.
    assert {(f[1], t.token) for f, t in zip(frames, ticks, strict=True)} == {
        (ExchangeType.NSE_CM, "2885"),
        (ExchangeType.NSE_FO, NIFTY_FUT),
    }
    fut = [t for t in ticks if t.token == NIFTY_FUT]
    assert all(20_000 < t.ltp < 30_000 for t in fut)  # a NIFTY future, not an equity price
    last: dict[tuple[int, str], int] = {}
    for t in ticks:
        key = (t.exchange_type, t.token)
        assert t.sequence > last.get(key, 0)
        last[key] = t.sequence
    if mode == Mode.SNAP_QUOTE:
        assert all(t.open_interest > 0 and t.open_interest % 75 == 0 for t in fut)
        assert all(t.open_interest == 0 for t in ticks if t.token == "2885")


async def test_a_token_on_the_wrong_segment_of_a_mixed_feed_is_unknown() -> None:
    server = await _sim(rate=1000.0, tokens=["2885", (ExchangeType.NSE_FO, NIFTY_FUT)])
    try:
        async with _connect(server.url) as ws:
            # Each token exists, but on the other segment: E1004 names both pairs.
            await ws.send(_request_many(Mode.LTP, [(2, ["2885"]), (1, [NIFTY_FUT])]))
            reply = json.loads(await _text(ws))
            assert reply["errorCode"] == "E1004"
            assert "2:2885" in reply["errorMessage"] and f"1:{NIFTY_FUT}" in reply["errorMessage"]
            assert await _frames_until_pong(ws) == []  # nothing got subscribed
            await ws.send(_request_many(Mode.LTP, [(2, [NIFTY_FUT, "424242"])]))
            reply = json.loads(await _text(ws))
            assert reply["errorCode"] == "E1004" and "2:424242" in reply["errorMessage"]
            keys = {(f[1], decode(f).token) for f in await _frames(ws, 10)}
            assert keys == {(ExchangeType.NSE_FO, NIFTY_FUT)}
            # DEPTH stays NSE_CM only, as on the real feed.
            await ws.send(_request_many(Mode.DEPTH, [(2, [NIFTY_FUT])]))
            assert json.loads(await _text(ws))["errorCode"] == "E1006"
    finally:
        await server.stop()


async def test_cli_serves_segment_prefixed_tokens_next_to_bare_ones() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tools.cli", "sim", "--port", "0", "--no-orders", "--rate", "500",
        "--tokens", f"2885,1594,NSE_FO:{NIFTY_FUT}",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stderr is not None
    try:
        async with asyncio.timeout(20):
            while True:
                line = await proc.stderr.readline()
                assert line, "simulator exited before listening"
                if b'"sim_listening"' in line:
                    event = json.loads(line)
                    break
        assert event["tokens"] == ["NSE_CM:2885", "NSE_CM:1594", f"NSE_FO:{NIFTY_FUT}"]
        async with _connect(event["url"]) as ws:
            await ws.send(_request_many(Mode.QUOTE, [(1, ["1594"]), (2, [NIFTY_FUT])]))
            keys = {(f[1], decode(f).token) for f in await _frames(ws, 20)}
        assert keys == {(ExchangeType.NSE_CM, "1594"), (ExchangeType.NSE_FO, NIFTY_FUT)}
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.communicate(), 10)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        ("2885,NSE_XX:35006", "unknown segment 'NSE_XX'"),
        ("2885,NSE_FO:", "no token after NSE_FO:"),
        ("2885,NSE_FO:35006,nse_fo:35006", "duplicate"),
        (" , ", "--tokens needs at least one token"),
    ],
)
def test_cli_refuses_bad_segment_prefixes_by_name(tokens: str, message: str) -> None:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "tools.cli", "sim", "--port", "0", "--tokens", tokens],
        cwd=REPO, capture_output=True, text=True, timeout=20,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "sim_listening" not in done.stderr
