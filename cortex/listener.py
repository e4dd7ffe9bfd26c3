"""The cortex's telemetry subscriber: a daemon thread inside the Streamlit server process.

It drains the SUB socket in batches and folds each batch into ``CortexState`` under one
lock acquisition, so page renders (which take the lock only to copy) never stall it for
long. It never sends anything to the engine: a slow, paused or dead cortex costs the hot
path nothing, and the black box nothing (what overflows the cortex's own queue at the
publisher is dropped for the cortex alone, and shows here as sequence gaps).
"""

from __future__ import annotations

import threading
import time
from typing import Any

import structlog
import zmq

from cortex.state import CortexState

log = structlog.get_logger(__name__)

POLL_MS = 100
BATCH = 5_000  # messages folded per lock acquisition


class TelemetryListener:
    """Subscribe to every telemetry topic at ``endpoint`` and fold into ``state``."""

    def __init__(
        self,
        endpoint: str,
        state: CortexState | None = None,
        ctx: zmq.Context[Any] | None = None,
        rcvhwm: int = 1_000_000,
    ) -> None:
        self.endpoint = endpoint
        self.state = state or CortexState()
        self._ctx = ctx or zmq.Context.instance()
        self._rcvhwm = rcvhwm
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.batches = 0

    def start(self) -> TelemetryListener:
        self._thread = threading.Thread(target=self.run, name="cortex-telemetry", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 2.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def run(self) -> None:
        sock = self._ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.RCVHWM, self._rcvhwm)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.connect(self.endpoint)
        log.info("cortex_telemetry_connected", endpoint=self.endpoint)
        state = self.state
        handle = state.handle
        recv = sock.recv
        clock = time.monotonic_ns
        try:
            while not self._stop.is_set():
                if not sock.poll(POLL_MS):
                    continue
                batch: list[bytes] = []
                append = batch.append
                try:
                    for _ in range(BATCH):
                        append(recv(zmq.NOBLOCK))
                except zmq.Again:
                    pass
                # One clock read per batch: the lag of its last message is measured after
                # the whole batch was received, never flattered.
                now = clock()
                with state.lock:
                    for message in batch:
                        handle(message, now)
                    state.sample_lag(now)
                self.batches += 1
        except Exception:  # the thread must say why it died; the page shows it stale
            log.exception("cortex_telemetry_failed", endpoint=self.endpoint)
            raise
        finally:
            sock.close(linger=0)
