"""FeedClient against the real simulator on 127.0.0.1: subscribe, survive, resubscribe."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chimera_core.config import parse_config
from chimera_core.contracts import Mode
from chimera_core.event_loop import Engine
from chimera_core.feed.client import FeedClient, subscription_message
from chimera_core.feed.smartapi_v2 import decode
from tools.sim.server import ExchangeSimulator, Faults

pytestmark = pytest.mark.timeout(60)

HEADERS = {
    "Authorization": "Bearer T",
    "x-api-key": "k",
    "x-client-code": "A1",
    "x-feed-token": "f",
}


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


class Collector:
    def __init__(self) -> None:
        self.frames: list[tuple[bytes, int]] = []

    def __call__(self, frame: bytes, recv_ns: int) -> None:
        self.frames.append((frame, recv_ns))

    def tokens(self, since: int = 0) -> set[str]:
        return {decode(f).token for f, _ in self.frames[since:]}


def _client(sim: ExchangeSimulator, on_frame, headers=HEADERS, **kw) -> FeedClient:
    kw.setdefault("reconnect_initial_s", 0.05)
    kw.setdefault("reconnect_max_s", 0.2)
    return FeedClient(sim.url, headers, on_frame, rng=random.Random(1), **kw)


def test_subscription_message_is_what_the_server_expects():
    msg = orjson.loads(subscription_message(1, 3, 1, ["1594"], "abc123"))
    assert msg == {
        "correlationID": "abc123",
        "action": 1,
        "params": {"mode": 3, "tokenList": [{"exchangeType": 1, "tokens": ["1594"]}]},
    }
    assert "correlationID" not in orjson.loads(subscription_message(0, 1, 2, ["1"]))


@given(st.integers(0, 200), st.floats(0.01, 5.0), st.floats(1.0, 120.0))
def test_backoff_grows_exponentially_with_jitter_and_is_capped(attempt, initial, cap):
    client = FeedClient(
        "ws://127.0.0.1:1/x",
        HEADERS,
        lambda f, r: None,
        reconnect_initial_s=initial,
        reconnect_max_s=cap,
        rng=random.Random(attempt),
    )
    ceiling = min(cap, initial * 2.0 ** min(attempt, 30))
    delay = client.backoff_s(attempt)
    assert ceiling / 2 <= delay <= ceiling


def test_backoff_is_jittered():
    client = FeedClient("ws://127.0.0.1:1/x", HEADERS, lambda f, r: None, rng=random.Random(3))
    assert len({round(client.backoff_s(5), 9) for _ in range(20)}) > 10


async def test_subscribe_receives_only_subscribed_tokens_in_the_mode_and_unsubscribe_stops():
    async with ExchangeSimulator(port=0, rate=600.0) as sim:
        got = Collector()
        client = _client(sim, got)
        await client.subscribe(Mode.SNAP_QUOTE, 1, ["2885", "1594"])
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: len(got.frames) >= 40)
        assert got.tokens() == {"2885", "1594"}
        assert {len(f) for f, _ in got.frames} == {379}
        await client.unsubscribe(Mode.SNAP_QUOTE, 1, ["2885"])
        await asyncio.sleep(0.3)  # frames already in flight may still arrive
        mark = len(got.frames)
        await _until(lambda: len(got.frames) >= mark + 30)
        assert got.tokens(mark) == {"1594"}
        stop.set()
        await asyncio.wait_for(task, 5)
        assert client.stats.connects == 1


async def test_reconnects_without_a_retry_cap_and_resubscribes_everything():
    faults = Faults(drop_every_s=0.4)  # alternates clean closes and transport aborts
    async with ExchangeSimulator(port=0, rate=500.0, faults=faults) as sim:
        got = Collector()
        states: list[bool] = []
        client = _client(sim, got, on_state=states.append)
        await client.subscribe(Mode.QUOTE, 1, ["2885", "1594", "3045"])
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: client.stats.connects >= 5, timeout=20)
        mark = len(got.frames)
        await _until(lambda: len(got.frames) >= mark + 30)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert got.tokens(mark) == {"2885", "1594", "3045"}  # everything resubscribed
    assert states[:4] == [True, False, True, False]
    assert client.stats.disconnects == client.stats.connects


async def test_auth_rejection_is_reported_and_retried_until_stopped():
    with capture_logs() as logs:
        await _auth_rejected()
    assert any(
        e["event"] == "feed_auth_rejected" and "CHIMERA_FEED_TOKEN" in e["fix"] for e in logs
    )


async def _auth_rejected() -> None:
    async with ExchangeSimulator(port=0, rate=100.0) as sim:
        client = _client(sim, Collector(), headers={**HEADERS, "x-feed-token": ""})
        await client.subscribe(Mode.LTP, 1, ["2885"])
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: client.stats.auth_rejects >= 3)
        stop.set()
        await asyncio.wait_for(task, 5)
    assert client.stats.connects == 0


async def test_text_frames_are_counted_and_logged_not_fed_to_the_engine():
    with capture_logs() as logs:
        got = await _with_unknown_token()
    assert all(isinstance(f, bytes) for f, _ in got.frames)
    assert any(e["event"] == "feed_server_message" and "99999" in e["text"] for e in logs)


async def _with_unknown_token() -> Collector:
    async with ExchangeSimulator(port=0, rate=100.0) as sim:
        got = Collector()
        client = _client(sim, got)
        await client.subscribe(Mode.QUOTE, 1, ["2885", "99999"])  # 99999: unknown to the exchange
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: client.stats.server_errors >= 1 and len(got.frames) >= 5)
        stop.set()
        await asyncio.wait_for(task, 5)
    return got


async def test_engine_survives_a_hostile_feed_and_counts_every_fault():
    """Malformed, duplicate and out-of-order frames plus drops: the loop keeps deciding."""
    faults = Faults(drop_every_s=0.7, malformed_p=0.05, duplicate_p=0.05, out_of_order_p=0.05)
    engine = Engine(parse_config('[logging]\ndecisions = "none"'))
    async with ExchangeSimulator(port=0, rate=2000.0, faults=faults, seed=4) as sim:
        client = _client(sim, engine.on_frame, on_state=engine.on_feed_state)
        await client.subscribe(Mode.QUOTE, 1, ["2885", "1594", "3045"])
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: engine.stats.decisions >= 4000 and client.stats.connects >= 3, 30)
        stop.set()
        await asyncio.wait_for(task, 5)
    s = engine.stats
    assert s.malformed > 0 and s.duplicates > 0 and s.out_of_order > 0 and s.gaps > 0
    assert client.stats.handler_errors == 0
    accounted = (s.decisions + s.malformed + s.duplicates + s.out_of_order + s.bad_price
                 + s.late + s.unknown_token + s.depth_updates)  # fmt: skip
    assert accounted == s.frames == client.stats.frames
    assert engine.feed_epoch == client.stats.connects


async def test_a_silent_stall_marks_the_next_ticks_stale():
    faults = Faults(stall_after_s=0.5, stall_for_s=1.2)
    engine = Engine(parse_config('[feed]\nstale_after_s = 0.8\n[logging]\ndecisions = "none"'))
    stale_seen: list[bool] = []

    def on_frame(frame: bytes, recv_ns: int) -> None:
        d = engine.on_frame(frame, recv_ns)
        if d is not None:
            stale_seen.append(d.feed_stale)

    async with ExchangeSimulator(port=0, rate=300.0, faults=faults) as sim:
        client = _client(sim, on_frame)
        await client.subscribe(Mode.QUOTE, 1, ["2885"])
        stop = asyncio.Event()
        task = asyncio.ensure_future(client.run(stop))
        await _until(lambda: len(stale_seen) > 250, 15)
        stop.set()
        await asyncio.wait_for(task, 5)
    # The first tick is stale (nothing before it), then fresh, then stale again after the stall.
    assert stale_seen[0] is True
    flips = [i for i in range(1, len(stale_seen)) if stale_seen[i] and not stale_seen[i - 1]]
    assert flips, "no tick after the stall was flagged stale"
    assert client.stats.connects == 1  # silence is not a dead socket: no reconnect
