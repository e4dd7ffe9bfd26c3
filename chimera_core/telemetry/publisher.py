"""The telemetry publisher (the hot path's only window to the world, and it never waits)
and the SUB side for side processes.

One XPUB socket bound to 127.0.0.1 (or ipc://). Each message is a single frame:
``topic NUL seq(8, little-endian) msgpack-payload``. Sends are NOBLOCK and never wait.
Each subscriber has its own bounded queue (the high-water mark): a slow, stopped or dead
subscriber loses what overflows *its* queue, and only it does — every other subscriber
(the black-box recorder above all) still gets every message. Each subscriber counts its
own loss from the sequence numbers (``TelemetrySubscriber.gaps``/``missed``, the
recorder's manifest gaps). (With XPUB_NODROP, as before, one full queue failed the send
for every subscriber: a SIGSTOPped cortex took records from the black box.)

``batch=True`` (``telemetry.batch``, what ``chimera live`` runs): a message is numbered and
encoded when published, in order, and handed to the socket at the end of the event
loop's current wake-up (``call_soon``), together with whatever else was published in it
(at most ``MAX_BATCH`` at a time): the tick that decided does not wait for ZeroMQ, and one
hand-over wakes the I/O thread once for the lot. Outside a running loop it sends at once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import msgspec
import structlog
import zmq

from chimera_core.contracts import Decision, TickRecord
from chimera_core.errors import ChimeraError
from chimera_core.telemetry.codec import SEP, SEQ, TOPIC_RAW, TOPIC_TICK, decode_payload, split

# The recorder subscribes to this prefix besides everything (b""): no message matches it
# (topics never start with NUL), so it costs nothing, but the publisher sees it arrive and
# can tell "the black box is attached" from "some subscriber (the cortex) is attached".
RECORDER_SUBSCRIPTION = b"\x00recorder"
# The recorder re-dials a restarted engine this often (ZeroMQ's RECONNECT_IVL, no backoff):
# it bounds how long a restarted engine waits in wait_for_recorder.
RECORDER_RECONNECT_MS = 100
# A clean close waits at most this long for queued messages to reach the subscribers.
CLOSE_FLUSH_MS = 2_000
# A batch is handed over once it holds this many messages, wake-up over or not.
MAX_BATCH = 256

log = structlog.get_logger(__name__)


class TelemetryPublisher:
    """Non-blocking publisher; ``sent`` counts every message handed to the socket,
    ``dropped`` the ones it refused outright (none in normal running: a subscriber's own
    overflow is that subscriber's gap, see the module docstring)."""

    def __init__(
        self,
        endpoint: str = "tcp://127.0.0.1:7001",
        hwm: int = 100_000,
        ctx: zmq.Context[Any] | None = None,
        batch: bool = False,
    ) -> None:
        # An own context unless given one: close() terminates it, which is what makes the
        # last queued messages leave before the process exits (a clean stop loses nothing).
        self._own_ctx = ctx is None
        self._ctx = ctx if ctx is not None else zmq.Context()
        sock = self._ctx.socket(zmq.XPUB)
        # Per subscriber: a queue past the HWM drops for that subscriber alone (no NODROP).
        sock.setsockopt(zmq.SNDHWM, hwm)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            if self._own_ctx:
                self._ctx.term()
            raise ChimeraError(
                f"cannot bind telemetry to {endpoint}: {exc.strerror} (another `chimera live` "
                "running? set telemetry.endpoint to a free port or ipc:// path)"
            ) from exc
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._sock = sock
        self._send = sock.send
        self._encode = msgspec.msgpack.Encoder().encode
        self._seq = 0
        self._topics: dict[str, bytes] = {}
        self.sent = 0
        self.dropped = 0
        self.subscriptions = 0  # distinct topic subscriptions (the recorder's marker not counted)
        self.recorders = 0  # recorders attached (their marker subscription)
        self.batching = batch
        self._pending: list[bytes] = []
        self.batches = 0  # hand-overs of a batch (batch=True)
        self.flush_ns = 0  # time spent handing batches to the socket, in all

    def publish(self, topic: bytes, obj: Any) -> bool:
        """Encode and send (or queue for the end of this wake-up, ``batch=True``); False
        (and counted) when the socket refused it."""
        self._seq += 1
        message = b"".join((topic, SEP, SEQ.pack(self._seq), self._encode(obj)))
        if self.batching:
            pending = self._pending
            pending.append(message)
            if len(pending) == 1:
                try:
                    asyncio.get_running_loop().call_soon(self.flush)
                except RuntimeError:  # no loop (start-up, shutdown, a tool): send now
                    self.flush()
            elif len(pending) >= MAX_BATCH:
                self.flush()
            return True
        try:
            self._send(message, zmq.NOBLOCK)
        except zmq.Again:
            self.dropped += 1
            return False
        self.sent += 1
        return True

    def flush(self) -> None:
        """Hand every queued message to the socket, in order (``batch=True``)."""
        pending = self._pending
        if not pending or self._sock.closed:
            return
        self._pending = []
        t0 = time.perf_counter_ns()
        send, noblock = self._send, zmq.NOBLOCK
        for message in pending:
            try:
                send(message, noblock)
            except zmq.Again:
                self.dropped += 1
            else:
                self.sent += 1
        self.batches += 1
        self.flush_ns += time.perf_counter_ns() - t0

    def tick(self, frame: bytes, recv_ns: int, decision: Decision | None) -> None:
        """The frame and its decision (or the dropped frame alone) as one message."""
        if decision is None:
            self.publish(TOPIC_RAW, TickRecord(recv_ns, frame, None))
        else:
            topic = self._topics.get(decision.token)
            if topic is None:
                topic = self._topics[decision.token] = TOPIC_TICK + decision.token.encode()
            self.publish(topic, TickRecord(recv_ns, frame, decision))

    def drain_subscriptions(self) -> int:
        """Read (un)subscribe notices so they do not pile up; returns the live count change."""
        n = 0
        while True:
            try:
                msg = self._sock.recv(zmq.NOBLOCK)
            except zmq.Again:
                return n
            if msg[1:] == RECORDER_SUBSCRIPTION:
                self.recorders += 1 if msg[:1] == b"\x01" else -1
            elif msg[:1] == b"\x01":
                self.subscriptions += 1
                n += 1
            elif msg[:1] == b"\x00":
                self.subscriptions -= 1
                n -= 1

    async def wait_for_recorder(self, wait_s: float, stop: asyncio.Event | None = None) -> bool:
        """Before the first publish: wait up to ``wait_s`` for the black-box recorder.

        A PUB socket drops what it sends while nobody is subscribed, so an engine that
        publishes before a long-running recorder has re-dialled it (every
        ``RECORDER_RECONNECT_MS``) loses the head of its session. Another subscriber (the
        cortex) does not count. True when a recorder is attached; False after the wait
        (then the engine goes on: trading never depends on the recorder), at once for 0.
        """
        self.drain_subscriptions()
        if self.recorders > 0 or wait_s <= 0:
            return self.recorders > 0
        deadline = time.monotonic() + wait_s  # start-up wait only, never engine logic
        while self.recorders <= 0 and time.monotonic() < deadline:
            if stop is not None and stop.is_set():
                break
            await asyncio.sleep(0.01)
            self.drain_subscriptions()
        if self.recorders > 0:
            log.info("telemetry_recorder_attached", subscriptions=self.subscriptions)
            return True
        log.warning(
            "telemetry_no_recorder",
            waited_s=wait_s,
            subscriptions=self.subscriptions,
            hint="is `chimera record` running on this telemetry endpoint?",
        )
        return False

    def close(self, flush_ms: int = CLOSE_FLUSH_MS) -> None:
        """Close; queued messages get up to ``flush_ms`` to reach the subscribers (0: drop)."""
        if self._sock.closed:
            return
        self.flush()
        self._sock.close(linger=flush_ms)
        if self._own_ctx:
            self._ctx.term()  # returns once the queue is sent or the linger has passed


class TelemetrySubscriber:
    """SUB side for side processes (recorder, cortex, tests)."""

    def __init__(
        self,
        endpoint: str,
        topics: tuple[bytes, ...] = (b"",),
        ctx: zmq.Context[Any] | None = None,
        rcvhwm: int = 1_000_000,
    ) -> None:
        self._ctx = ctx or zmq.Context.instance()
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        for t in topics:
            sock.setsockopt(zmq.SUBSCRIBE, t)
        sock.connect(endpoint)
        self.sock = sock
        self.last_seq = 0
        self.gaps = 0
        self.missed = 0

    def recv(self, timeout_ms: int | None = None) -> bytes | None:
        """One raw message (or None on timeout); tracks publisher-sequence gaps."""
        if timeout_ms is not None and not self.sock.poll(timeout_ms):
            return None
        message: bytes = self.sock.recv()
        _, seq, _ = split(message)
        if self.last_seq and seq > self.last_seq + 1:
            self.gaps += 1
            self.missed += seq - self.last_seq - 1
        self.last_seq = max(self.last_seq, seq)
        return message

    def messages(self, timeout_ms: int) -> Iterator[tuple[bytes, int, Any]]:
        """Decoded (topic, seq, payload) until ``timeout_ms`` passes with nothing new."""
        while True:
            message = self.recv(timeout_ms)
            if message is None:
                return
            topic, seq, payload = split(message)
            yield topic, seq, decode_payload(topic, payload)

    def close(self) -> None:
        self.sock.close(linger=0)
