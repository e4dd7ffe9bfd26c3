"""SmartAPI v2 market-data client on ``websockets``: connect, subscribe, stay connected.

Unlike the SDK's SmartWebSocketV2 it has no lifetime retry budget: it reconnects with
exponential backoff and jitter for as long as it runs, and re-sends every subscription
after each reconnect. Binary frames go straight to ``on_frame(frame, recv_ns)`` on the
event loop (the hot path); text frames are the server's errors and pongs.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any, Literal

import orjson
import structlog
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

from chimera_core.config import is_loopback_url
from chimera_core.contracts import Mode

log = structlog.get_logger(__name__)

SUBSCRIBE = 1
UNSUBSCRIBE = 0
MAX_TOKENS_PER_CONNECTION = 1000

FrameHandler = Callable[[bytes, int], Any]


def subscription_message(
    action: int, mode: int, exchange_type: int, tokens: list[str], correlation_id: str = ""
) -> str:
    """The JSON text a SmartAPI v2 server expects for (un)subscribe."""
    msg: dict[str, Any] = {}
    if correlation_id:
        msg["correlationID"] = correlation_id
    msg["action"] = action
    msg["params"] = {"mode": mode, "tokenList": [{"exchangeType": exchange_type, "tokens": tokens}]}
    return orjson.dumps(msg).decode()


class FeedStats:
    """Counters the engine and the health telemetry read."""

    def __init__(self) -> None:
        self.connects = 0
        self.disconnects = 0
        self.auth_rejects = 0
        self.frames = 0
        self.text_frames = 0
        self.server_errors = 0
        self.handler_errors = 0
        self.last_frame_ns = 0
        self.connected = False
        self.epoch = 0  # bumps on every (re)connect; ticks from a new epoch re-confirm signals


class FeedClient:
    def __init__(
        self,
        url: str,
        headers: dict[str, str],
        on_frame: FrameHandler,
        *,
        reconnect_initial_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        ping_interval_s: float = 10.0,
        ping_timeout_s: float = 20.0,
        rng: random.Random | None = None,
        clock: Callable[[], int] = time.monotonic_ns,
        on_state: Callable[[bool], Any] | None = None,
    ) -> None:
        self.url = url
        self._headers = headers
        self._on_frame = on_frame
        self._on_state = on_state
        self.reconnect_initial_s = reconnect_initial_s
        self.reconnect_max_s = reconnect_max_s
        self.ping_interval_s = ping_interval_s
        self.ping_timeout_s = ping_timeout_s
        self._rng = rng or random.Random()
        self._clock = clock
        self._ws: ClientConnection | None = None
        # (mode, exchange_type) -> tokens, in subscription order; the truth for resubscribe.
        self._subscriptions: dict[tuple[int, int], list[str]] = {}
        self.stats = FeedStats()
        self._attempt = 0
        # Loopback (the simulator) never goes through an environment proxy.
        self._proxy: Literal[True] | None = None if is_loopback_url(url) else True

    # ---- subscriptions -------------------------------------------------------------
    def subscriptions(self) -> dict[tuple[int, int], list[str]]:
        return {k: list(v) for k, v in self._subscriptions.items()}

    def set_headers(self, headers: dict[str, str]) -> None:
        """Credentials for the next (re)connect, e.g. from a fresh broker login."""
        self._headers = dict(headers)

    async def subscribe(self, mode: int, exchange_type: int, tokens: list[str]) -> None:
        Mode(mode)  # raises ValueError on a bad mode before anything is sent
        current = self._subscriptions.setdefault((mode, exchange_type), [])
        new = [t for t in tokens if t not in current]
        total = sum(len(v) for v in self._subscriptions.values()) + len(new)
        if total > MAX_TOKENS_PER_CONNECTION:
            raise ValueError(
                f"{total} tokens would exceed the {MAX_TOKENS_PER_CONNECTION} per connection limit"
            )
        current.extend(new)
        if new and self._ws is not None:
            await self._send(subscription_message(SUBSCRIBE, mode, exchange_type, new))

    async def unsubscribe(self, mode: int, exchange_type: int, tokens: list[str]) -> None:
        current = self._subscriptions.get((mode, exchange_type), [])
        gone = [t for t in tokens if t in current]
        self._subscriptions[(mode, exchange_type)] = [t for t in current if t not in gone]
        if gone and self._ws is not None:
            await self._send(subscription_message(UNSUBSCRIBE, mode, exchange_type, gone))

    async def _send(self, text: str) -> None:
        ws = self._ws
        if ws is None:
            return
        try:
            await ws.send(text)
        except ConnectionClosed:
            pass  # the reconnect path resubscribes everything

    # ---- connection ----------------------------------------------------------------
    def backoff_s(self, attempt: int) -> float:
        """Exponential backoff with 'equal jitter': half fixed, half random, capped."""
        ceiling = min(self.reconnect_max_s, self.reconnect_initial_s * (2.0 ** min(attempt, 30)))
        return ceiling / 2.0 + self._rng.uniform(0.0, ceiling / 2.0)

    async def run(self, stop: asyncio.Event) -> None:
        """Connect and reconnect until ``stop`` is set."""
        while not stop.is_set():
            try:
                await self._session(stop)
                if not stop.is_set():
                    log.warning("feed_closed_by_server")
            except InvalidStatus as exc:
                code = exc.response.status_code
                if code in (401, 403):
                    self.stats.auth_rejects += 1
                    log.error(
                        "feed_auth_rejected",
                        status=code,
                        fix="check CHIMERA_JWT / CHIMERA_FEED_TOKEN / CHIMERA_API_KEY / "
                        "CHIMERA_CLIENT_CODE; the JWT and feed token expire daily",
                    )
                else:
                    log.warning("feed_handshake_failed", status=code)
            except (OSError, InvalidHandshake, ConnectionClosed, TimeoutError) as exc:
                log.warning("feed_connection_lost", error=type(exc).__name__, detail=str(exc))
            if stop.is_set():
                break
            delay = self.backoff_s(self._attempt)
            self._attempt += 1
            log.info("feed_reconnect_wait", attempt=self._attempt, delay_s=round(delay, 3))
            try:
                await asyncio.wait_for(stop.wait(), timeout=delay)
            except TimeoutError:
                pass

    async def _session(self, stop: asyncio.Event) -> None:
        async with connect(
            self.url,
            additional_headers=self._headers,
            compression=None,
            ping_interval=self.ping_interval_s,
            ping_timeout=self.ping_timeout_s,
            proxy=self._proxy,
            max_queue=4096,
            open_timeout=10,
            close_timeout=2,
        ) as ws:
            self._ws = ws
            stats = self.stats
            stats.connects += 1
            stats.epoch += 1
            stats.connected = True
            self._attempt = 0
            log.info("feed_connected", url=self.url, epoch=stats.epoch)
            if self._on_state is not None:
                self._on_state(True)
            # Stop closes the socket from outside, so the receive loop needs no extra await.
            closer = asyncio.ensure_future(self._close_on(stop, ws))
            try:
                for (mode, exchange_type), tokens in self._subscriptions.items():
                    if tokens:
                        await ws.send(
                            subscription_message(SUBSCRIBE, mode, exchange_type, tokens, "chimera")
                        )
                await self._receive(ws)
            finally:
                closer.cancel()
                self._ws = None
                stats.connected = False
                stats.disconnects += 1
                if self._on_state is not None:
                    self._on_state(False)

    @staticmethod
    async def _close_on(stop: asyncio.Event, ws: ClientConnection) -> None:
        await stop.wait()
        await ws.close()

    async def _receive(self, ws: ClientConnection) -> None:
        on_frame = self._on_frame
        clock = self._clock
        stats = self.stats
        async for message in ws:
            if isinstance(message, bytes):
                now = clock()
                stats.frames += 1
                stats.last_frame_ns = now
                try:
                    on_frame(message, now)
                except Exception:  # the loop must never die on one frame
                    stats.handler_errors += 1
                    log.exception("frame_handler_failed", size=len(message))
            else:
                self._on_text(message)

    def _on_text(self, text: str) -> None:
        self.stats.text_frames += 1
        if text == "pong":
            return
        self.stats.server_errors += 1
        log.warning("feed_server_message", text=text[:500])
