"""Telemetry: exact messages on real ZeroMQ sockets, and a hot path that never waits."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from chimera_core.config import parse_config
from chimera_core.contracts import FeedEvent, Mode, TickRecord
from chimera_core.event_loop import Engine, session_info
from chimera_core.feed.client import FeedClient
from chimera_core.feed.smartapi_v2 import encode
from chimera_core.telemetry import (
    TOPIC_FEED,
    TOPIC_SESSION,
    TelemetryPublisher,
    TelemetrySubscriber,
    decode_payload,
    encode_message,
    split,
)
from chimera_core.telemetry.publisher import MAX_BATCH
from tools.sim.market import Market
from tools.sim.server import ExchangeSimulator

pytestmark = pytest.mark.timeout(90)
REPO = Path(__file__).resolve().parents[2]


def _wait_subscribed(pub: TelemetryPublisher, n: int = 1, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pub.subscriptions < n:
        pub.drain_subscriptions()
        assert time.monotonic() < deadline, "subscriber never attached"
        time.sleep(0.01)


def test_messages_arrive_exactly_in_order_with_sequence_numbers():
    engine = Engine(parse_config('[logging]\ndecisions = "none"'))
    market = Market(seed=2)
    pub = TelemetryPublisher("tcp://127.0.0.1:0")
    sub = TelemetrySubscriber(pub.endpoint)
    _wait_subscribed(pub)
    cfg = parse_config("")
    info = session_info(cfg)
    pub.publish(TOPIC_SESSION, info)
    pub.publish(TOPIC_FEED, FeedEvent(True, 1, 5))
    sent = [(b"session", info), (b"feed", FeedEvent(True, 1, 5))]
    for i in range(300):
        frame = encode(market.next_tick(Mode.QUOTE))
        if i == 100:
            frame = b"\x02junk"
        d = engine.on_frame(frame, i)
        pub.tick(frame, i, d)
        sent.append((b"tick." + d.token.encode() if d else b"raw", TickRecord(i, frame, d)))
    got = list(sub.messages(timeout_ms=500))
    assert [seq for _, seq, _ in got] == list(range(1, len(sent) + 1))
    for (topic, obj), (gtopic, _, gobj) in zip(sent, got, strict=True):
        assert gtopic == topic
        assert msgspec.msgpack.encode(gobj) == msgspec.msgpack.encode(obj)
    assert msgspec.json.decode(got[0][2].config_json, type=type(cfg)) == cfg
    assert sub.gaps == 0 and pub.dropped == 0
    pub.close()
    sub.close()


def test_subscribers_filter_on_topic_prefix_and_see_gaps_as_missing_sequence():
    pub = TelemetryPublisher("tcp://127.0.0.1:0")
    only_feed = TelemetrySubscriber(pub.endpoint, topics=(b"feed",))
    _wait_subscribed(pub)
    for i in range(10):
        pub.publish(TOPIC_FEED if i % 2 else TOPIC_SESSION, FeedEvent(True, i, i))
    got = list(only_feed.messages(timeout_ms=300))
    assert [t for t, _, _ in got] == [b"feed"] * 5
    assert [s for _, s, _ in got] == [2, 4, 6, 8, 10]
    assert only_feed.missed == 4  # it cannot tell filtered from lost: seq is per publisher


def test_split_rejects_messages_without_a_header():
    with pytest.raises(Exception, match="no topic/sequence header"):
        split(b"no-separator")
    topic, seq, payload = split(encode_message(b"feed", 7, FeedEvent(False, 2, 3)))
    assert (topic, seq) == (b"feed", 7)
    assert decode_payload(topic, payload) == FeedEvent(False, 2, 3)


def test_a_stalled_subscriber_loses_only_its_own_messages():
    """Each subscriber has its own queue: one that stops reading loses what overflows its
    queue (and sees it as a gap when it reads again); the others lose nothing."""
    pub = TelemetryPublisher("tcp://127.0.0.1:0", hwm=100)
    healthy = TelemetrySubscriber(pub.endpoint)
    stalled = TelemetrySubscriber(pub.endpoint, topics=(TOPIC_FEED,), rcvhwm=100)
    _wait_subscribed(pub, 2)
    blob = "x" * 1000  # 20 MB in all: far past both queues and the kernel's socket buffers
    n, got = 20_000, 0
    for i in range(n):
        pub.publish(TOPIC_FEED, {"i": i, "blob": blob})
        # A reader that keeps up (each message read before the next is sent): its queue
        # never fills, whatever the stalled one's does.
        if healthy.recv(2000) is not None:
            got += 1
    assert (got, healthy.gaps, pub.sent, pub.dropped) == (n, 0, n, 0)
    kept = 0
    while stalled.recv(200) is not None:  # what its queue held when it stopped reading
        kept += 1
    pub.publish(TOPIC_FEED, {"i": n})
    assert stalled.recv(2000) is not None
    assert kept < n and stalled.missed == n - kept and stalled.gaps == 1
    pub.close()
    healthy.close()
    stalled.close()


SLOW_SUBSCRIBER = """
import sys, time, zmq
ctx = zmq.Context()
s = ctx.socket(zmq.SUB)
s.setsockopt(zmq.RCVHWM, 100)
s.setsockopt(zmq.SUBSCRIBE, b"")
s.connect(sys.argv[1])
print("ready", flush=True)
while True:
    s.recv()
    time.sleep(0.01)
"""


HEALTHY_SUBSCRIBER = """
import sys
from chimera_core.telemetry import TelemetrySubscriber
sub = TelemetrySubscriber(sys.argv[1], topics=(b"tick", b"raw"))
print("ready", flush=True)
n = 0
while sub.recv(None if n == 0 else 3000) is not None:
    n += 1
print(n, sub.gaps, flush=True)
"""


async def test_a_slow_then_stopped_then_killed_subscriber_never_slows_the_tick_loop(tmp_path):
    """The real hot path (feed client → engine → telemetry) keeps the simulator's pace
    while one subscriber is slow, SIGSTOPped, then SIGKILLed; a second one that keeps up
    (the recorder's part) gets every message throughout."""
    rate = 4000.0
    # 5,000 queued per subscriber (1.25 s at this rate; the engine's default is 100,000):
    # the slow one's ~28,000 overflow it, the healthy one's never do.
    pub = TelemetryPublisher(f"ipc://{tmp_path}/telemetry.sock", hwm=5_000)
    engine = Engine(parse_config('[logging]\ndecisions = "none"'))
    # In a process of its own, as the recorder is: it reads until 3 s pass without a
    # message, then says how many it got and how many gaps it saw.
    healthy = subprocess.Popen(
        [sys.executable, "-c", HEALTHY_SUBSCRIBER, pub.endpoint],
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )

    def on_frame(frame: bytes, recv_ns: int) -> None:
        pub.tick(frame, recv_ns, engine.on_frame(frame, recv_ns))

    sub = subprocess.Popen(
        [sys.executable, "-c", SLOW_SUBSCRIBER, pub.endpoint],
        stdout=subprocess.PIPE,
        env=os.environ,
    )
    try:
        assert sub.stdout is not None and sub.stdout.readline().strip() == b"ready"
        assert healthy.stdout is not None and healthy.stdout.readline().strip() == b"ready"
        _wait_subscribed(pub, 3)  # the slow one's b"" and the healthy one's two prefixes
        async with ExchangeSimulator(port=0, rate=rate) as sim:
            headers = {
                "Authorization": "a",
                "x-api-key": "a",
                "x-client-code": "a",
                "x-feed-token": "a",
            }
            client = FeedClient(sim.url, headers, on_frame)
            await client.subscribe(Mode.QUOTE, 1, ["2885", "1594", "3045"])
            stop = asyncio.Event()
            task = asyncio.ensure_future(client.run(stop))
            await asyncio.sleep(1.0)  # connected and flowing

            async def phase(seconds: float) -> float:
                d0, t0 = engine.stats.decisions, time.perf_counter()
                await asyncio.sleep(seconds)
                return (engine.stats.decisions - d0) / (time.perf_counter() - t0)

            slow_rate = await phase(2.0)
            os.kill(sub.pid, signal.SIGSTOP)
            stopped_rate = await phase(3.0)
            os.kill(sub.pid, signal.SIGKILL)
            sub.wait(5)
            killed_rate = await phase(2.0)
            stop.set()
            await asyncio.wait_for(task, 5)
        out, _ = healthy.communicate(timeout=30)
    finally:
        for p in (sub, healthy):
            if p.poll() is None:
                p.kill()
        pub.close()
    received, gaps = (int(x) for x in out.split())
    for measured in (slow_rate, stopped_rate, killed_rate):
        assert measured > 0.85 * rate, (slow_rate, stopped_rate, killed_rate)
    # 100 msg/s against 4000/s, then stopped, then dead: the slow one's queue overflowed
    # (into its own loss) and nobody else lost a message.
    assert pub.sent == engine.stats.frames and pub.dropped == 0
    assert (received, gaps) == (pub.sent, 0)


async def test_wait_for_recorder_waits_for_the_black_box_not_any_subscriber(tmp_path):
    """A restarted engine holds its first publish for the recorder; the cortex (any other
    subscriber) attached first does not release it, a real `chimera record` does."""
    pub = TelemetryPublisher("tcp://127.0.0.1:0")
    cortex = TelemetrySubscriber(pub.endpoint)
    recorder = None
    try:
        _wait_subscribed(pub)
        assert await pub.wait_for_recorder(0) is False  # 0: never waits
        assert await pub.wait_for_recorder(0.3) is False
        cmd = [sys.executable, "-m", "tools.record", "--data-dir", str(tmp_path / "data")]
        recorder = subprocess.Popen(
            [*cmd, "--endpoint", pub.endpoint],
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        assert await pub.wait_for_recorder(30) is True
        assert pub.recorders == 1 and pub.subscriptions == 1  # the marker is not a topic
        stop = asyncio.Event()
        stop.set()
        assert await pub.wait_for_recorder(30, stop) is True  # attached: no wait at all
        recorder.send_signal(signal.SIGINT)
        assert recorder.wait(15) == 0
        deadline = time.monotonic() + 10
        while pub.recorders and time.monotonic() < deadline:
            pub.drain_subscriptions()
            await asyncio.sleep(0.02)
        assert pub.recorders == 0
        assert await pub.wait_for_recorder(30, stop) is False  # stop ends the wait
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
            recorder.wait()
        cortex.close()
        pub.close()


CLEAN_STOP_PUBLISHER = """
import sys, time
from chimera_core.contracts import TickRecord
from chimera_core.telemetry import TOPIC_RAW, TelemetryPublisher
pub = TelemetryPublisher(sys.argv[1], hwm=1_000_000)
while pub.subscriptions == 0:
    pub.drain_subscriptions()
    time.sleep(0.01)
for i in range(int(sys.argv[2])):  # 40 MB: more than the kernel's socket buffers hold
    assert pub.publish(TOPIC_RAW, TickRecord(i, bytes(2000), None))
print("published", flush=True)
pub.close()  # then the process exits at once, as `chimera live` does after its stop
"""


def test_a_clean_stop_delivers_every_message_already_published(tmp_path):
    """close() flushes: the last messages of a stopping engine reach the recorder, even
    when the recorder is behind (most of them still queued in the publisher)."""
    from tests.loopback import free_port

    n = 20_000
    endpoint = f"tcp://127.0.0.1:{free_port()}"  # the default transport
    proc = subprocess.Popen(
        [sys.executable, "-c", CLEAN_STOP_PUBLISHER, endpoint, str(n)],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE,
    )
    sub = TelemetrySubscriber(endpoint, rcvhwm=1_000)  # a reader that lags: queue backs up
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"published"
        got = 0
        while got < n and sub.recv(timeout_ms=5_000) is not None:
            got += 1
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        sub.close()
    assert got == n and sub.gaps == 0 and sub.last_seq == n


async def test_a_batching_publisher_hands_over_a_wake_ups_messages_together_in_order():
    pub = TelemetryPublisher("tcp://127.0.0.1:0", batch=True)
    sub = TelemetrySubscriber(pub.endpoint)
    _wait_subscribed(pub)
    n = MAX_BATCH + 10  # one wake-up's worth: one full batch handed over inline, then the rest

    def one_wake_up() -> None:
        for i in range(n):
            pub.publish(TOPIC_FEED, FeedEvent(True, i, i))
        # Numbered and queued, not yet sent past the first full batch.
        assert (pub.sent, pub.batches, len(pub._pending)) == (MAX_BATCH, 1, 10)

    asyncio.get_running_loop().call_soon(one_wake_up)
    await asyncio.sleep(0)  # the wake-up
    await asyncio.sleep(0)  # the hand-over scheduled at its end
    assert (pub.sent, pub.batches, pub._pending) == (n, 2, [])
    got = list(sub.messages(timeout_ms=500))
    assert [s for _, s, _ in got] == list(range(1, n + 1))
    assert [p.epoch for _, _, p in got] == list(range(n))
    # Queued at close: sent, not lost.
    pub.publish(TOPIC_FEED, FeedEvent(False, n, n))
    pub.close()
    assert [s for _, s, _ in sub.messages(timeout_ms=500)] == [n + 1]
    sub.close()


def test_a_batching_publisher_outside_a_loop_sends_at_once():
    pub = TelemetryPublisher("tcp://127.0.0.1:0", batch=True)
    sub = TelemetrySubscriber(pub.endpoint)
    _wait_subscribed(pub)
    pub.publish(TOPIC_FEED, FeedEvent(True, 1, 1))
    assert pub.sent == 1 and not pub._pending
    assert [s for _, s, _ in sub.messages(timeout_ms=500)] == [1]
    pub.close()
    sub.close()
