"""A local exchange that speaks SmartAPI WebSocket 2.0 (smart-stream) byte for byte.

Clients connect to ``ws://HOST:PORT/smart-stream`` with the four SmartAPI headers,
subscribe with the SDK's JSON text requests and receive one binary packet per message in
the mode each token was subscribed with (see shared/reference/smartapi-v2-protocol.md §12).

The market (``tools.sim.market.Market``) or a replayed tick file advances on the
simulator's own schedule: ``rate`` ticks per second in total across tokens, evenly
spaced by a deadline schedule; ``rate=0`` floods as fast as the clients take frames.
The order side (``tools.sim.orders.OrderGateway``: SmartConnect REST routes and the
order-update websocket) runs next to it on ``rest_port`` (default ``port + 1``, or any
free port when that is busy or ``port`` is 0) and matches orders against the same
``Market``; a replay has no order side. A random-walk market runs from ``start()``
whether or not anyone is connected, so a client that reconnects sees a sequence gap, as
with the real feed. A replay (and a flood) waits for the first subscription, so a client
can receive a file from its first frame; a replay stops at the end of the file (no loop:
looping would repeat sequence numbers) and sets ``replay_done``; connections stay open
and silent.

Choices where the real server's behaviour is not documented (all assumptions):
- a token may be subscribed in several modes at once and then gets one packet per mode;
  unsubscribe removes the given mode only;
- the 4th connection of a client code is accepted and closed with 1008;
- error frames are JSON text ``{"correlationID", "errorCode", "errorMessage"}`` with our
  own codes (E1001 bad request, E1002 bad action/mode, E1003 bad exchange type or
  token list, E1004 unknown token, E1005 over 1000 tokens, E1006 DEPTH limits);
- during a simulated stall ticks are dropped, not queued (the client sees a gap when
  the feed resumes) while text replies (pong, errors) still flow.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http
import ipaddress
import json
import os
import random
import signal
import sys
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from chimera_core.contracts import ExchangeType, Mode
from chimera_core.feed.smartapi_v2 import PACKET_SIZE, encode
from chimera_core.logging import configure_logging
from chimera_core.tickfile import TickFileReader, TickFileWriter
from tools.sim.market import DEFAULT_TOKENS, Market
from tools.sim.orders import (
    DEFAULT_CLIENT_CODE,
    DEFAULT_PASSWORD,
    DEFAULT_TOTP_SECRET,
    OrderFaults,
    OrderGateway,
)

log = structlog.get_logger(__name__)

STREAM_PATH = "/smart-stream"
REQUIRED_HEADERS = ("Authorization", "x-api-key", "x-client-code", "x-feed-token")
MAX_CONNECTIONS_PER_CLIENT = 3
MAX_TOKENS_PER_CONNECTION = 1000
MAX_DEPTH_TOKENS = 50
SUBSCRIBE, UNSUBSCRIBE = 1, 0
_EXCHANGE_TYPES = frozenset(int(e) for e in ExchangeType)
_MODES = frozenset(int(m) for m in Mode)
_VALID_SIZES = frozenset(PACKET_SIZE.values())

# A client more than this many frames behind makes the market wait (flood mode relies
# on it); it resumes once every client is back under the low mark.
_BACKLOG_HIGH = 20_000
_BACKLOG_LOW = 5_000
_FLOOD_BATCH = 256
_MAX_LAG_S = 0.25  # further behind schedule than this and the schedule is rebased
_MAX_BURST = 4096  # ticks produced before yielding to the clients' writers
_MIN_SLEEP_S = 0.001


@dataclass(frozen=True)
class Faults:
    """Seeded fault injection; everything is off by default.

    drop_every_s: close each connection N s after it opened, alternating a clean 1000
        close and an abrupt transport abort (no close frame).
    malformed_p: per frame, send a short / over-long / wrong-mode / wrong-exchange /
        garbage / empty frame instead of the tick or before it (half and half).
    duplicate_p: per frame, send the frame of that token again right after it.
    out_of_order_p: per frame, hold it back and send it after the token's next frame.
    stall_after_s, stall_for_s: after N s of sending, send no ticks for M s without
        closing (ticks of the stall are dropped), then resume; repeats.
    """

    drop_every_s: float = 0.0
    malformed_p: float = 0.0
    duplicate_p: float = 0.0
    out_of_order_p: float = 0.0
    stall_after_s: float = 0.0
    stall_for_s: float = 0.0

    def __post_init__(self) -> None:
        for name in ("malformed_p", "duplicate_p", "out_of_order_p"):
            p = getattr(self, name)
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"Faults.{name} must be a probability in [0, 1], got {p}")
        for name in ("drop_every_s", "stall_after_s", "stall_for_s"):
            if getattr(self, name) < 0:
                raise ValueError(f"Faults.{name} must be >= 0 seconds, got {getattr(self, name)}")
        if self.stall_for_s > 0 and self.stall_after_s <= 0:
            raise ValueError("Faults.stall_after_s must be > 0 when stall_for_s is set")


class SubscriptionError(Exception):
    """A subscribe/unsubscribe request the exchange refuses; becomes an error text frame."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


_Key = tuple[int, str]  # (exchange type, token)


def _is_int(value: object) -> bool:
    # JSON true/1.0 must not pass for 1: the real server's fields are integers.
    return type(value) is int


class _Client:
    """One websocket connection: its subscriptions, outbound queue and fault state."""

    def __init__(
        self, sim: ExchangeSimulator, ws: ServerConnection, client_code: str, index: int
    ) -> None:
        self.sim = sim
        self.ws = ws
        self.client_code = client_code
        self.index = index
        self.subscriptions: dict[_Key, set[int]] = {}
        self.queue: deque[bytes | str] = deque()  # str = text reply
        self.wake = asyncio.Event()
        self.faults = sim.faults
        # Each connection gets its own seeded stream so faults are reproducible.
        self.rng = random.Random(sim.seed * 1_000_003 + index)
        self.held: dict[tuple[_Key, int], bytes] = {}
        opened = asyncio.get_running_loop().time()
        self.stall_at = opened + self.faults.stall_after_s if self.faults.stall_for_s > 0 else None
        self.stall_logged = False
        self.frames_sent = 0

    # -- subscriptions -------------------------------------------------------------
    def subscription_count(self) -> int:
        return sum(len(modes) for modes in self.subscriptions.values())

    # -- outbound path -------------------------------------------------------------
    def offer(self, key: _Key, mode: int, frame: bytes, now: float) -> None:
        """Queue one tick frame for this client, applying the configured faults."""
        faults = self.faults
        if self.stall_at is not None and now >= self.stall_at:
            stall_end = self.stall_at + faults.stall_for_s
            if now < stall_end:
                if not self.stall_logged:
                    self.stall_logged = True
                    log.info("sim_fault_stall", client=self.index, stall_for_s=faults.stall_for_s)
                return
            # Next stall after another stall_after_s of sending.
            self.stall_at = stall_end + faults.stall_after_s
            self.stall_logged = False
        if faults.out_of_order_p:
            held = self.held.pop((key, mode), None)
            if held is not None:
                self._emit(frame)
                self._emit(held)
                return
            if self.rng.random() < faults.out_of_order_p:
                self.held[(key, mode)] = frame
                return
        self._emit(frame)

    def _emit(self, frame: bytes) -> None:
        faults = self.faults
        if faults.malformed_p and self.rng.random() < faults.malformed_p:
            self._push(self._garble(frame))
            if self.rng.random() < 0.5:
                return  # instead of the tick: the client also sees a sequence gap
        self._push(frame)
        if faults.duplicate_p and self.rng.random() < faults.duplicate_p:
            self._push(frame)

    def _garble(self, frame: bytes) -> bytes:
        rng = self.rng
        kind = rng.randrange(6)
        if kind == 0:  # short: a torn packet
            return frame[: rng.randint(1, len(frame) - 1)]
        if kind == 1:  # too long: trailing bytes
            return frame + rng.randbytes(rng.randint(1, 16))
        if kind == 2:  # unknown mode byte
            return bytes((rng.choice((0, 5, 9, 255)),)) + frame[1:]
        if kind == 3:  # unknown exchange type
            return frame[:1] + bytes((rng.choice((0, 6, 99)),)) + frame[2:]
        if kind == 4:  # noise, never the length of a valid packet
            return rng.randbytes(rng.randint(1, 50))
        return b""

    def reply(self, text: str) -> None:
        """Queue a text reply behind the ticks already queued, so replies keep order."""
        self._push(text)

    def _push(self, frame: bytes | str) -> None:
        self.queue.append(frame)
        if not self.wake.is_set():
            self.wake.set()

    async def pump(self) -> None:
        """Send queued frames and replies in order; one packet per websocket message."""
        queue, ws, sim = self.queue, self.ws, self.sim
        while True:
            if not queue:
                self.wake.clear()
                await self.wake.wait()
                continue
            frame = queue.popleft()
            try:
                await ws.send(frame)
            except ConnectionClosed:
                return  # the handler notices the close and cleans up
            if type(frame) is bytes:
                self.frames_sent += 1
                sim.frames_sent += 1
                if sim.recorder is not None:
                    sim.recorder.write(time.monotonic_ns(), frame)
            if sim.producer_waiting and len(queue) < _BACKLOG_LOW:
                sim.release_producer()


class ExchangeSimulator:
    """SmartAPI v2 market-data server on 127.0.0.1 driven by a Market or a tick file."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 8765,
        rate: float = 1000.0,
        seed: int = 7,
        tokens: Sequence[str | tuple[int, str]] = DEFAULT_TOKENS,
        faults: Faults | None = None,
        replay: str | Path | None = None,
        record_sent: str | Path | None = None,
        exchange_type: int = ExchangeType.NSE_CM,
        *,
        rest_port: int | None = None,
        order_side: bool = True,
        client_code: str = DEFAULT_CLIENT_CODE,
        password: str = DEFAULT_PASSWORD,
        totp_secret: str = DEFAULT_TOTP_SECRET,
        order_faults: OrderFaults | None = None,
        fill_delay_s: float = 0.05,
        partial_qty: int = 1000,
        clock_file: str | Path | None = None,
    ) -> None:
        if rate < 0:
            raise ValueError(f"rate must be >= 0 ticks/s (0 = flood), got {rate}")
        self.host = host
        self._port = port
        self.rate = float(rate)
        self.seed = seed
        self.faults = faults or Faults()
        self.replay_path = Path(replay) if replay is not None else None
        self.record_sent_path = Path(record_sent) if record_sent is not None else None
        self.market: Market | None = None
        self._replay_frames: list[tuple[_Key, int, bytes]] = []
        self._replay_keys: set[_Key] = set()
        # The market's clock survives a restart: it resumes on the day after the saved one,
        # so a client's intent ids (which embed exchange time) never repeat (`make demo`).
        self.clock_file = Path(clock_file) if clock_file is not None else None
        if self.replay_path is None:
            self.market = Market(
                tokens,
                seed=seed,
                exchange_type=exchange_type,
                resume_after_ms=_read_clock(self.clock_file),
            )
        self._clock_task: asyncio.Task[None] | None = None
        self.recorder: TickFileWriter | None = None
        self.frames_sent = 0  # frames handed to client sockets
        self.ticks_generated = 0  # market ticks or replayed file frames consumed
        self.replay_skipped = 0  # unparseable frames in the replay file
        self.replay_done = asyncio.Event()
        self.producer_waiting = False
        self._drained = asyncio.Event()
        self._first_subscription = asyncio.Event()
        self._clients: set[_Client] = set()
        self._per_client_code: dict[str, int] = {}
        self._routes: dict[_Key, dict[int, list[_Client]]] = {}
        self._connections = 0
        self._drops = 0
        self._server: Server | None = None
        self._producer: asyncio.Task[None] | None = None
        # The order side (tools/sim/orders.py) matches against the random-walk market, so
        # a replay has none. rest_port None = market port + 1 (any free port if busy).
        self._rest_port_explicit = rest_port is not None
        self.orders: OrderGateway | None = None
        if order_side and self.market is not None:
            self.orders = OrderGateway(
                self.market,
                host=host,
                port=rest_port if rest_port is not None else 0,
                client_code=client_code,
                password=password,
                totp_secret=totp_secret,
                fill_delay_s=fill_delay_s,
                partial_qty=partial_qty,
                faults=order_faults,
                seed=seed,
            )

    # -- lifecycle ---------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The listening port (the ephemeral one chosen by the OS once started with 0)."""
        return self._port

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self._port}{STREAM_PATH}"

    @property
    def rest_port(self) -> int:
        """The order side's REST/order-update port (0 when there is no order side)."""
        return self.orders.port if self.orders is not None else 0

    @property
    def rest_url(self) -> str:
        """SmartConnect ``root`` for the order side, e.g. http://127.0.0.1:8766."""
        return self.orders.rest_url if self.orders is not None else ""

    @property
    def order_ws_url(self) -> str:
        return self.orders.ws_url if self.orders is not None else ""

    async def _start_orders(self) -> None:
        orders = self.orders
        if orders is None:
            return
        if not self._rest_port_explicit:
            # Default: next to the market port; any free port when that is 0 or busy.
            orders._port = self._port + 1 if self._port + 1 <= 65535 else 0
            try:
                await orders.start()
                return
            except OSError as exc:
                log.warning("sim_orders_port_busy", port=orders._port, error=str(exc))
                orders._port = 0
        await orders.start()

    async def start(self) -> None:
        if self.replay_path is not None:
            self._load_replay(self.replay_path)
        self._server = await serve(
            self._serve_client,
            self.host,
            self._port,
            process_request=self._check_upgrade,
            compression=None,  # permessage-deflate costs ~28 % and the real feed has none
            ping_interval=None,  # the exchange does not ping; it answers client pings
            max_size=2**16,
        )
        self._port = self._server.sockets[0].getsockname()[1]
        try:
            await self._start_orders()
        except BaseException:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
            raise
        if self.record_sent_path is not None:
            self.recorder = TickFileWriter(self.record_sent_path)
        self._producer = asyncio.create_task(self._run_schedule(), name="sim-schedule")
        if self.clock_file is not None and self.market is not None:
            self._clock_task = asyncio.create_task(self._keep_clock(), name="sim-clock")
        log.info(
            "sim_listening",
            url=self.url,
            rate=self.rate,
            seed=self.seed,
            source="replay" if self.replay_path else "market",
            tokens=[f"{ExchangeType(e).name}:{t}" for e, t in self.market.instruments]
            if self.market
            else len(self._replay_keys),
            session_date=self.market.session_date.isoformat() if self.market else None,
        )

    async def stop(self) -> None:
        if self._producer is not None:
            self._producer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._producer
            self._producer = None
        if self._clock_task is not None:
            self._clock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._clock_task
            self._clock_task = None
            self._save_clock()
        if self.orders is not None:
            await self.orders.stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        if self.recorder is not None:
            self.recorder.close()
            self.recorder = None
        log.info(
            "sim_stopped",
            ticks_generated=self.ticks_generated,
            frames_sent=self.frames_sent,
        )

    async def __aenter__(self) -> ExchangeSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def _keep_clock(self) -> None:
        # Every second as well as at stop: a killed simulator still leaves its clock.
        while True:
            await asyncio.sleep(1.0)
            self._save_clock()

    def _save_clock(self) -> None:
        if self.clock_file is None or self.market is None:
            return
        self.clock_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.clock_file.with_name(self.clock_file.name + ".tmp")
        tmp.write_text(json.dumps({"now_ms": self.market.now_ms}))
        os.replace(tmp, self.clock_file)

    async def serve_forever(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set (the CLI sets it on SIGINT/SIGTERM)."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()

    # -- handshake and connections ---------------------------------------------------
    def _check_upgrade(self, connection: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path != STREAM_PATH:
            return connection.respond(http.HTTPStatus.NOT_FOUND, f"no such stream {path}\n")
        missing = [h for h in REQUIRED_HEADERS if not request.headers.get(h, "").strip()]
        if missing:
            # Names of the missing headers only; their values are secrets.
            log.warning("sim_upgrade_unauthorized", missing=missing)
            return connection.respond(http.HTTPStatus.UNAUTHORIZED, "Unauthorized\n")
        return None

    async def _serve_client(self, ws: ServerConnection) -> None:
        assert ws.request is not None
        client_code = ws.request.headers["x-client-code"]
        open_count = self._per_client_code.get(client_code, 0)
        if open_count >= MAX_CONNECTIONS_PER_CLIENT:
            log.warning("sim_connection_refused", client_code=client_code, open=open_count)
            await ws.close(1008, f"max {MAX_CONNECTIONS_PER_CLIENT} connections per client code")
            return
        self._per_client_code[client_code] = open_count + 1
        client = _Client(self, ws, client_code, self._connections)
        self._connections += 1
        self._clients.add(client)
        log.info("sim_client_connected", client_code=client_code, client=client.index)
        tasks = [asyncio.create_task(client.pump(), name=f"sim-pump-{client.index}")]
        if self.faults.drop_every_s > 0:
            tasks.append(asyncio.create_task(self._drop_later(client)))
        try:
            async for message in ws:
                if isinstance(message, str):
                    reply = self._on_text(client, message)
                    if reply is not None:
                        client.reply(reply)
                else:
                    client.reply(self._error("", "E1001", "binary requests are not accepted"))
        except ConnectionClosed:
            pass
        finally:
            # Out of the routes first, so the schedule stops queueing for a dead client.
            self._clients.discard(client)
            self._rebuild_routes()
            self.release_producer()
            self._per_client_code[client_code] -= 1
            if not self._per_client_code[client_code]:
                del self._per_client_code[client_code]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            log.info(
                "sim_client_disconnected",
                client_code=client_code,
                client=client.index,
                frames_sent=client.frames_sent,
                close_code=ws.close_code,
            )

    async def _drop_later(self, client: _Client) -> None:
        await asyncio.sleep(self.faults.drop_every_s)
        clean = self._drops % 2 == 0
        self._drops += 1
        log.info("sim_fault_drop", client=client.index, clean=clean)
        if clean:
            await client.ws.close(1000, "simulated drop")
        else:
            client.ws.transport.abort()  # no close frame: like a dead TCP peer

    # -- requests ----------------------------------------------------------------------
    @staticmethod
    def _error(correlation_id: str, code: str, message: str) -> str:
        return json.dumps(
            {"correlationID": correlation_id, "errorCode": code, "errorMessage": message}
        )

    def _on_text(self, client: _Client, text: str) -> str | None:
        if text == "ping":
            return "pong"
        correlation_id = ""
        try:
            try:
                request = json.loads(text)
            except (ValueError, RecursionError):  # not JSON, or nested beyond reason
                raise SubscriptionError(
                    "E1001", "request is not JSON (expected a subscribe request or ping)"
                ) from None
            if not isinstance(request, dict):
                raise SubscriptionError("E1001", "request must be a JSON object")
            cid = request.get("correlationID", "")
            correlation_id = cid if isinstance(cid, str) else str(cid)
            return self._apply(client, request, correlation_id)
        except SubscriptionError as exc:
            log.info(
                "sim_request_rejected", client=client.index, error_code=exc.code, reason=exc.message
            )
            return self._error(correlation_id, exc.code, exc.message)

    def _apply(self, client: _Client, request: dict[str, Any], correlation_id: str) -> str | None:
        action = request.get("action")
        params = request.get("params")
        if not _is_int(action) or action not in (SUBSCRIBE, UNSUBSCRIBE):
            raise SubscriptionError("E1002", f"action must be 1 (subscribe) or 0, got {action!r}")
        if not isinstance(params, dict):
            raise SubscriptionError("E1001", "params must be an object with mode and tokenList")
        mode = params.get("mode")
        if not _is_int(mode) or mode not in _MODES:
            raise SubscriptionError("E1002", f"params.mode must be 1, 2, 3 or 4, got {mode!r}")
        token_list = params.get("tokenList")
        if not isinstance(token_list, list) or not token_list:
            raise SubscriptionError("E1003", "params.tokenList must be a non-empty list")
        wanted: list[_Key] = []
        for entry in token_list:
            if not isinstance(entry, dict):
                raise SubscriptionError("E1003", "tokenList entries must be objects")
            exchange_type = entry.get("exchangeType")
            tokens = entry.get("tokens")
            if not _is_int(exchange_type) or exchange_type not in _EXCHANGE_TYPES:
                raise SubscriptionError(
                    "E1003",
                    f"exchangeType must be one of {sorted(_EXCHANGE_TYPES)}, got {exchange_type!r}",
                )
            if not isinstance(tokens, list) or not all(isinstance(t, str) and t for t in tokens):
                raise SubscriptionError("E1003", "tokens must be a list of non-empty strings")
            wanted.extend((exchange_type, t) for t in tokens)

        if action == UNSUBSCRIBE:
            for key in wanted:
                modes = client.subscriptions.get(key)
                if modes is not None:
                    modes.discard(mode)
                    client.held.pop((key, mode), None)  # no stale frame after a resubscribe
                    if not modes:
                        del client.subscriptions[key]
            self._rebuild_routes()
            log.info("sim_unsubscribed", client=client.index, mode=mode, tokens=len(wanted))
            return None

        if mode == Mode.DEPTH:
            if any(exchange_type != ExchangeType.NSE_CM for exchange_type, _ in wanted):
                raise SubscriptionError("E1006", "DEPTH (mode 4) is available for NSE_CM only")
            depth_now = sum(1 for modes in client.subscriptions.values() if Mode.DEPTH in modes)
            new_depth = {k for k in wanted if Mode.DEPTH not in client.subscriptions.get(k, ())}
            if depth_now + len(new_depth) > MAX_DEPTH_TOKENS:
                raise SubscriptionError(
                    "E1006", f"DEPTH allows at most {MAX_DEPTH_TOKENS} tokens per connection"
                )
        known = [k for k in wanted if self._knows(k)]
        unknown = [k for k in wanted if not self._knows(k)]
        fresh = {k for k in known if mode not in client.subscriptions.get(k, ())}
        if client.subscription_count() + len(fresh) > MAX_TOKENS_PER_CONNECTION:
            raise SubscriptionError(
                "E1005", f"at most {MAX_TOKENS_PER_CONNECTION} tokens per connection"
            )
        for key in known:
            client.subscriptions.setdefault(key, set()).add(mode)
        self._rebuild_routes()
        if known:
            self._first_subscription.set()
            self.release_producer()
        log.info("sim_subscribed", client=client.index, mode=mode, tokens=len(known))
        if unknown:
            names = ", ".join(f"{e}:{t}" for e, t in unknown[:10])
            return self._error(correlation_id, "E1004", f"unknown token(s) {names}")
        return None

    def _knows(self, key: _Key) -> bool:
        if self.market is not None:
            return self.market.knows(*key)
        return key in self._replay_keys

    def _rebuild_routes(self) -> None:
        routes: dict[_Key, dict[int, list[_Client]]] = {}
        for client in sorted(self._clients, key=lambda c: c.index):
            for key, modes in client.subscriptions.items():
                by_mode = routes.setdefault(key, {})
                for mode in sorted(modes):
                    by_mode.setdefault(mode, []).append(client)
        self._routes = routes

    # -- the schedule ------------------------------------------------------------------
    def release_producer(self) -> None:
        if not self._drained.is_set():
            self._drained.set()

    def _backlogged(self) -> bool:
        return any(len(c.queue) > _BACKLOG_HIGH for c in self._clients)

    async def _wait_for_clients(self) -> None:
        """Backpressure: wait while any client is far behind."""
        while self._backlogged():
            self.producer_waiting = True
            self._drained.clear()
            await self._drained.wait()
        self.producer_waiting = False

    async def _run_schedule(self) -> None:
        loop = asyncio.get_running_loop()
        if self.market is None or self.rate == 0:
            await self._first_subscription.wait()
        if self.rate == 0:
            await self._flood()
            return
        rate = self.rate
        started = loop.time()
        produced = 0
        while True:
            # Tick k is due at started + k / rate: send everything due, then sleep.
            due = int((loop.time() - started) * rate) + 1 - produced
            if due > rate * _MAX_LAG_S + 1:
                log.warning("sim_behind_schedule", behind_ticks=due)
                started = loop.time() - produced / rate
                due = 1
            for _ in range(min(due, _MAX_BURST)):
                if not self._produce():
                    return
                produced += 1
            await self._wait_for_clients()
            # Timers are millisecond-grained (libuv rounds shorter sleeps down to zero,
            # which would spin): never sleep less than 1 ms; what falls due meanwhile
            # goes out on the next wake-up.
            delay = started + produced / rate - loop.time()
            await asyncio.sleep(max(delay, _MIN_SLEEP_S))

    async def _flood(self) -> None:
        while True:
            if not self._routes:
                # Nobody listening: a flood would only race the market ahead.
                self._drained.clear()
                self.producer_waiting = True
                await self._drained.wait()
                self.producer_waiting = False
                continue
            for _ in range(_FLOOD_BATCH):
                if not self._produce():
                    return
            await self._wait_for_clients()
            await asyncio.sleep(0)

    def _produce(self) -> bool:
        """Advance the source one tick and hand its frames to subscribers."""
        now = asyncio.get_running_loop().time()
        self.ticks_generated += 1
        if self.market is not None:
            key = self.market.advance_key()
            by_mode = self._routes.get(key)
            if by_mode:
                for mode, clients in by_mode.items():
                    frame = encode(self.market.snapshot(key[1], mode, key[0]))
                    for client in clients:
                        client.offer(key, mode, frame, now)
            return True
        index = self.ticks_generated - 1
        if index >= len(self._replay_frames):
            self.ticks_generated -= 1
            self.replay_done.set()
            log.info("sim_replay_finished", frames=len(self._replay_frames))
            return False
        key, mode, frame = self._replay_frames[index]
        by_mode = self._routes.get(key)
        if by_mode:
            for client in by_mode.get(mode, ()):
                client.offer(key, mode, frame, now)
        return True

    def _load_replay(self, path: Path) -> None:
        reader = TickFileReader(path)
        for _, frame in reader:
            if len(frame) not in _VALID_SIZES or frame[0] not in _MODES:
                self.replay_skipped += 1
                continue
            name = frame[2:27].split(b"\0", 1)[0]
            if not name or not name.isascii():
                self.replay_skipped += 1
                continue
            key = (frame[1], name.decode("ascii"))
            self._replay_frames.append((key, frame[0], frame))
            self._replay_keys.add(key)
        log.info(
            "sim_replay_loaded",
            path=str(path),
            frames=len(self._replay_frames),
            skipped=self.replay_skipped,
            torn_tail=reader.torn_tail,
        )


def _read_clock(path: Path | None) -> int | None:
    """The exchange time (epoch ms) a previous run saved in ``path``; None if none yet."""
    if path is None or not path.exists():
        return None
    try:
        now_ms = json.loads(path.read_text())["now_ms"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f'--clock-file {path}: unreadable ({exc!r}); expected {{"now_ms": EPOCH_MS}}. '
            "Delete it to start the market on its seed's day"
        ) from None
    if not _is_int(now_ms) or now_ms < 0:
        raise ValueError(f"--clock-file {path}: now_ms must be epoch milliseconds, got {now_ms!r}")
    return int(now_ms)


def _positive_float(text: str) -> float:
    value = float(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a probability in [0, 1], got {text}")
    return value


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses; a name or wildcard is not loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_tokens(text: str, default_exchange_type: int) -> tuple[tuple[int, str], ...]:
    """``"2885,NSE_FO:35006"`` -> ``((1, "2885"), (2, "35006"))``; bare tokens get the default."""
    tokens = []
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        segment, sep, token = item.rpartition(":")
        if not sep:
            tokens.append((int(default_exchange_type), item))
            continue
        token = token.strip()
        name = segment.strip().upper()
        if name not in ExchangeType.__members__:
            names = ", ".join(ExchangeType.__members__)
            raise ValueError(
                f"--tokens {item!r}: unknown segment {segment.strip()!r} (use one of {names}, "
                "e.g. NSE_FO:35006)"
            )
        if not token:
            raise ValueError(f"--tokens {item!r}: no token after {segment.strip()}:")
        tokens.append((int(ExchangeType[name]), token))
    if not tokens:
        raise ValueError("--tokens needs at least one token")
    return tuple(tokens)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="chimera sim",
        description="Local SmartAPI exchange: WebSocket 2.0 market data at "
        "ws://HOST:PORT/smart-stream, SmartConnect REST and /smart-order-update at "
        "http://HOST:REST_PORT (tools/sim/orders.py)",
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument(
        "--allow-remote",
        action="store_true",
        help="allow a non-loopback --host (the simulator accepts any login and places orders)",
    )
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument(
        "--rate", type=_positive_float, default=1000.0, help="ticks/s across tokens; 0 = flood"
    )
    p.add_argument("--seed", type=int, default=7)
    p.add_argument(
        "--tokens",
        default=",".join(DEFAULT_TOKENS),
        help="comma-separated tokens, each on --exchange-type unless prefixed with a segment "
        "name, e.g. 2885,1594,NSE_FO:35006 (cash and F&O on one feed)",
    )
    p.add_argument(
        "--exchange-type",
        type=int,
        default=int(ExchangeType.NSE_CM),
        choices=sorted(_EXCHANGE_TYPES),
    )
    p.add_argument(
        "--clock-file",
        type=Path,
        help="keep the market's clock in this JSON file; a restart opens on the next weekday",
    )
    p.add_argument("--replay", type=Path, help="serve this tick file instead of the random walk")
    p.add_argument("--record-sent", type=Path, help="append every frame sent to this tick file")
    p.add_argument(
        "--drop-every",
        type=_positive_float,
        default=0.0,
        metavar="S",
        help="close each connection S s after it opens (alternately clean 1000 / abort)",
    )
    p.add_argument(
        "--malformed-p",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of a garbled frame instead of / before a tick",
    )
    p.add_argument(
        "--duplicate-p",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of sending a tick's frame twice",
    )
    p.add_argument(
        "--out-of-order-p",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of swapping a tick's frame with the token's next one",
    )
    p.add_argument(
        "--stall-after",
        type=_positive_float,
        default=0.0,
        metavar="S",
        help="with --stall-for: go quiet after every S s of sending",
    )
    p.add_argument(
        "--stall-for",
        type=_positive_float,
        default=0.0,
        metavar="S",
        help="length of each stall in seconds (ticks are dropped, the socket stays open)",
    )
    o = p.add_argument_group("order side (SmartConnect REST + /smart-order-update)")
    o.add_argument(
        "--rest-port",
        type=int,
        default=None,
        help="REST and order-update port (default: --port + 1; 0 picks a free port)",
    )
    o.add_argument("--no-orders", action="store_true", help="serve market data only")
    o.add_argument(
        "--client-code",
        default=os.environ.get("CHIMERA_SIM_CLIENT_CODE", DEFAULT_CLIENT_CODE),
        help="login client code (env CHIMERA_SIM_CLIENT_CODE)",
    )
    o.add_argument(
        "--password",
        default=os.environ.get("CHIMERA_SIM_PASSWORD", DEFAULT_PASSWORD),
        help="login password (env CHIMERA_SIM_PASSWORD)",
    )
    o.add_argument(
        "--totp-secret",
        default=os.environ.get("CHIMERA_SIM_TOTP_SECRET", DEFAULT_TOTP_SECRET),
        help="base32 TOTP secret logins are checked against (env CHIMERA_SIM_TOTP_SECRET)",
    )
    o.add_argument(
        "--fill-delay",
        type=_positive_float,
        default=0.05,
        metavar="S",
        help="seconds from accepting a MARKET order to its fill",
    )
    o.add_argument(
        "--partial-qty",
        type=int,
        default=1000,
        metavar="N",
        help="MARKET orders of at least N units fill in two halves (0 = never)",
    )
    o.add_argument(
        "--order-reject-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of an RMS reject (success response, then a rejected update)",
    )
    o.add_argument(
        "--order-update-drop-rate",
        type=_probability,
        default=0.0,
        metavar="P",
        help="probability of not sending an order update (the order book keeps the truth)",
    )
    o.add_argument(
        "--rate-limit-burst",
        type=int,
        default=0,
        metavar="N",
        help="answer the first N order calls with the 403 access-rate text",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """``chimera sim``: serve until SIGINT/SIGTERM, then stop cleanly."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not is_loopback(args.host) and not args.allow_remote:
        print(
            f"chimera sim: refusing to bind {args.host}: it is not a loopback address, and the "
            "simulator serves its REST login and order routes to anyone who reaches it; "
            "use --host 127.0.0.1 or pass --allow-remote",
            file=sys.stderr,
        )
        return 2
    try:
        tokens = parse_tokens(args.tokens, args.exchange_type)
    except ValueError as exc:
        parser.error(str(exc))
    if args.replay is not None and not args.replay.is_file():
        parser.error(f"--replay {args.replay}: no such tick file")
    try:
        faults = Faults(
            drop_every_s=args.drop_every,
            malformed_p=args.malformed_p,
            duplicate_p=args.duplicate_p,
            out_of_order_p=args.out_of_order_p,
            stall_after_s=args.stall_after,
            stall_for_s=args.stall_for,
        )
        order_faults = OrderFaults(
            reject_p=args.order_reject_rate,
            update_drop_p=args.order_update_drop_rate,
            rate_limit_burst=args.rate_limit_burst,
        )
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging("INFO")
    if not is_loopback(args.host):
        log.warning("sim_remote_bind", host=args.host, why="--allow-remote")
    try:
        sim = ExchangeSimulator(
            host=args.host,
            port=args.port,
            rate=args.rate,
            seed=args.seed,
            tokens=tokens,
            exchange_type=args.exchange_type,
            replay=args.replay,
            record_sent=args.record_sent,
            faults=faults,
            rest_port=args.rest_port,
            order_side=not args.no_orders,
            client_code=args.client_code,
            password=args.password,
            totp_secret=args.totp_secret,
            order_faults=order_faults,
            fill_delay_s=args.fill_delay,
            partial_qty=args.partial_qty,
            clock_file=args.clock_file,
        )
    except ValueError as exc:
        parser.error(str(exc))

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await sim.serve_forever(stop)

    try:
        import uvloop
    except ImportError:
        asyncio.run(run())
    else:
        uvloop.run(run())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
