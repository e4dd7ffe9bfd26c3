"""Control channel: real ROUTER/DEALER sockets on 127.0.0.1, a small engine stand-in."""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import statistics
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import orjson
import pytest
import zmq
import zmq.asyncio
from structlog.testing import capture_logs

from chimera_core.control import (
    COMMANDS,
    MIN_TOKEN_CHARS,
    ControlClient,
    ControlError,
    ControlServer,
    check_endpoint,
    encode_request,
    read_token,
    request_mac,
    resolve_token,
)
from chimera_core.errors import ConfigError

pytestmark = pytest.mark.timeout(60)
TOKEN = "correct-horse-battery-staple-0123456789"


class FakeEngine:
    """Stands in for the engine's control handler: mutates state, records when it ran."""

    def __init__(self) -> None:
        self.state = "ACTIVE"
        self.approved: list[str] = []
        self.applied_ns: list[int] = []
        self.ticks_seen: list[int] = []
        self.ticks = 0
        self.by: list[str] = []

    def handle(self, command: str, arg: str, by: str = "") -> tuple[bool, dict[str, Any]]:
        self.by.append(by)
        self.applied_ns.append(time.perf_counter_ns())
        self.ticks_seen.append(self.ticks)
        if command == "status":
            return True, {"state": self.state, "approved": list(self.approved)}
        if command == "pause":
            if self.state == "HALTED":
                return False, {"state": self.state, "reason": "halted"}
            self.state = "PAUSED"
        elif command == "resume":
            if self.state == "HALTED":
                return False, {"state": self.state, "reason": "halted"}
            self.state = "ACTIVE"
        elif command == "halt":
            self.state = "HALTED"
        elif command == "approve":
            if arg == "boom":
                raise RuntimeError("approval store unavailable")
            self.approved.append(arg)
        return True, {"state": self.state}


async def _serving(
    engine: FakeEngine, token: str = TOKEN
) -> tuple[ControlServer, asyncio.Event, asyncio.Task[None]]:
    server = ControlServer("tcp://127.0.0.1:0", token, engine.handle)
    stop = asyncio.Event()
    return server, stop, asyncio.create_task(server.serve(stop))


async def _in_thread(fn: Any, *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


async def test_round_trip_mutates_engine_state() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    assert server.endpoint.startswith("tcp://127.0.0.1:") and not server.endpoint.endswith(":0")
    with ControlClient(server.endpoint, TOKEN) as client:
        status = await _in_thread(client.request, "status")
        assert status["ok"] is True and status["command"] == "status"
        assert status["result"]["state"] == "ACTIVE" and isinstance(status["id"], str)
        assert (await _in_thread(client.request, "pause"))["result"] == {"state": "PAUSED"}
        assert engine.state == "PAUSED"
        assert (await _in_thread(client.request, "resume"))["result"] == {"state": "ACTIVE"}
        assert (await _in_thread(client.request, "approve", "INT-7"))["ok"] is True
        assert engine.approved == ["INT-7"]
        assert (await _in_thread(client.request, "halt"))["result"] == {"state": "HALTED"}
        refused = await _in_thread(client.request, "resume")
        assert refused["ok"] is False and refused["result"]["reason"] == "halted"
        assert engine.state == "HALTED"
    assert server.served == 6 and server.refused == 0
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_unknown_command_and_handler_failure_are_answered() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    with ControlClient(server.endpoint, TOKEN) as client:
        reply = await _in_thread(client.request, "self_destruct")
        assert reply["ok"] is False
        assert "unknown command 'self_destruct'" in reply["error"]
        assert all(c in reply["error"] for c in COMMANDS)
        with capture_logs() as logs:
            failed = await _in_thread(client.request, "approve", "boom")
        assert failed["ok"] is False and "approval store unavailable" in failed["error"]
        assert [e["event"] for e in logs] == ["control_handler_failed"]
        # The server survived both.
        assert (await _in_thread(client.request, "status"))["ok"] is True
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_wrong_token_refused_counted_and_never_logged() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    presented = "wrong-token-XYZ-987654321-abcdefghijklmnop"
    with capture_logs() as logs:
        with ControlClient(server.endpoint, presented) as client:
            for _ in range(2):
                with pytest.raises(ControlError, match="refused the control token"):
                    await _in_thread(client.request, "halt")
        # A request with no token at all, through a raw socket.
        raw = await _in_thread(_raw_request, server.endpoint, b'{"command": "halt"}')
        # A v1 request carrying the right token in clear: no longer enough.
        v1 = orjson.dumps({"token": TOKEN, "command": "halt", "arg": "", "id": "v1"})
        old = await _in_thread(_raw_request, server.endpoint, v1)
    assert raw["ok"] is False and raw["error"] == "refused: bad token"
    assert old["ok"] is False and old["error"] == "refused: bad token" and "sign" in old["hint"]
    assert server.refused == 4 and server.served == 0 and engine.state == "ACTIVE"
    refusals = [e for e in logs if e["event"] == "control_refused"]
    assert len(refusals) == 4 and refusals[0]["log_level"] == "warning"
    assert {e["reason"] for e in refusals} == {"mismatch", "missing", "unsigned"}
    dumped = repr(logs)
    assert TOKEN not in dumped and presented not in dumped
    stop.set()
    await asyncio.wait_for(task, 2)


def _signed(**fields: Any) -> bytes:
    """A correctly signed request with the given fields replaced (possibly by bad types)."""
    request: dict[str, Any] = {
        "v": 2,
        "command": "status",
        "arg": "",
        "id": "r1",
        "nonce": os.urandom(16).hex(),
        "ts_ms": int(time.time() * 1000),
        **fields,
    }
    request["mac"] = request_mac(TOKEN, request)
    return orjson.dumps(request)


def _raw_request(endpoint: str, payload: bytes) -> dict[str, Any]:
    """One request over a bare REQ socket, as any other zmq program could send it."""
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 2000)
    try:
        sock.connect(endpoint)
        sock.send(payload)
        reply: dict[str, Any] = orjson.loads(sock.recv())
        return reply
    finally:
        sock.close()
        ctx.term()


@pytest.mark.parametrize(
    ("payload", "why"),
    [
        (b"{not json", "not JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (_signed(command=5), "must be strings"),
        (_signed(command="approve", arg=["x"]), "must be strings"),
        (_signed(nonce=7), "'nonce' must be a string"),
        (_signed(nonce="short"), "'nonce' must be a string"),
        (_signed(ts_ms="1700000000000"), "'ts_ms' must be an integer"),
        (_signed(ts_ms=True), "'ts_ms' must be an integer"),
        (_signed(by=7), "'by' must be a printable string"),
        (_signed(by="x" * 129), "'by' must be a printable string"),
        (_signed(by="cli:me\nforged log line"), "'by' must be a printable string"),
    ],
)
async def test_malformed_requests_get_an_error_reply(payload: bytes, why: str) -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    reply = await _in_thread(_raw_request, server.endpoint, payload)
    assert reply["ok"] is False and "malformed request" in reply["error"] and why in reply["error"]
    assert server.malformed == 1 and not task.done()
    with ControlClient(server.endpoint, TOKEN) as client:
        assert (await _in_thread(client.request, "status"))["ok"] is True
    stop.set()
    await asyncio.wait_for(task, 2)


def test_client_times_out_quickly_when_nothing_listens() -> None:
    with zmq.Context() as ctx, ctx.socket(zmq.ROUTER) as probe:
        port = probe.bind_to_random_port("tcp://127.0.0.1")
    endpoint = f"tcp://127.0.0.1:{port}"
    client = ControlClient(endpoint, TOKEN, timeout_s=0.2)
    started = time.monotonic()
    with pytest.raises(ControlError, match=r"is `chimera live` running\?") as info:
        client.request("status")
    assert time.monotonic() - started < 1.5
    assert endpoint in str(info.value) and "0.2s" in str(info.value)
    # The client is still usable afterwards (fresh socket).
    with pytest.raises(ControlError):
        client.request("status")
    client.close()


async def test_late_reply_to_a_timed_out_request_is_not_mistaken() -> None:
    engine = FakeEngine()
    release = threading.Event()

    def slow(command: str, arg: str, by: str) -> tuple[bool, dict[str, Any]]:
        if arg == "slow":
            release.wait(1.0)
        return engine.handle(command, arg, by)

    server = ControlServer("tcp://127.0.0.1:0", TOKEN, slow)
    stop = asyncio.Event()
    # The blocking handler would stall this loop, so serve on a loop in another thread.
    loop_thread = _ServerThread(server, stop)
    loop_thread.start()
    with ControlClient(server.endpoint, TOKEN, timeout_s=0.1) as client:
        with pytest.raises(ControlError, match="no reply"):
            client.request("approve", "slow")
        release.set()
        client.timeout_s = 2.0
        assert client.request("approve", "fast")["result"] == {"state": "ACTIVE"}
    assert engine.approved == ["slow", "fast"]
    loop_thread.stop()


class _ServerThread(threading.Thread):
    def __init__(self, server: ControlServer, stop: asyncio.Event) -> None:
        super().__init__(daemon=True)
        self.server, self.stop_event = server, stop
        self.loop = asyncio.new_event_loop()

    def run(self) -> None:
        self.loop.run_until_complete(self.server.serve(self.stop_event))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.join(2)
        assert not self.is_alive()


async def test_ticks_keep_their_pace_while_commands_are_served() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    gaps: list[float] = []
    done = asyncio.Event()

    async def ticker() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now
            engine.ticks += 1

    def operator() -> list[int]:
        latencies = []
        with ControlClient(server.endpoint, TOKEN) as client:
            for i in range(200):
                sent = time.perf_counter_ns()
                reply = client.request("status" if i % 2 else "pause")
                latencies.append(engine.applied_ns[-1] - sent)
                assert reply["ok"] is True
        return latencies

    tick_task = asyncio.create_task(ticker())
    await asyncio.sleep(0.02)
    before = engine.ticks
    started = time.perf_counter()
    latencies = await asyncio.to_thread(operator)
    elapsed = time.perf_counter() - started
    done.set()
    await tick_task
    assert server.served == 200
    # Ticks advanced throughout: the handler saw many different tick counts.
    assert len(set(engine.ticks_seen)) > 20
    assert engine.ticks - before > 0.3 * elapsed / 0.0015
    # Generous bound (CI noise); a blocking server would stall for the whole burst.
    assert max(gaps) < 0.1
    us = sorted(ns / 1000 for ns in latencies)
    print(
        f"\ncontrol command->handler latency over {len(us)} requests: "
        f"p50={statistics.median(us):.0f}us p99={us[int(0.99 * len(us)) - 1]:.0f}us "
        f"max={us[-1]:.0f}us; tick gaps p50={statistics.median(gaps) * 1e3:.2f}ms "
        f"max={max(gaps) * 1e3:.2f}ms over {elapsed:.2f}s"
    )
    stop.set()
    await asyncio.wait_for(task, 2)


async def test_a_flood_of_requests_yields_to_ticks() -> None:
    """Requests that are already queued must not be served back-to-back without yielding."""
    engine = FakeEngine()
    server, stop, task = await _serving(engine)

    async def ticker() -> None:
        while not stop.is_set():
            await asyncio.sleep(0)
            engine.ticks += 1

    def flood() -> int:
        ctx = zmq.Context()
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVTIMEO, 5000)
        sock.connect(server.endpoint)
        now_ms = int(time.time() * 1000)
        for i in range(500):
            payload = encode_request(TOKEN, "status", rid=f"f{i}", ts_ms=now_ms)
            sock.send_multipart([b"", payload])
        got = sum(1 for _ in range(500) if orjson.loads(sock.recv_multipart()[-1])["ok"])
        sock.close()
        ctx.term()
        return got

    tick_task = asyncio.create_task(ticker())
    while engine.ticks == 0:
        await asyncio.sleep(0.001)
    assert await asyncio.to_thread(flood) == 500
    # Between consecutive requests the ticker ran: tick counts strictly increase.
    seen = engine.ticks_seen
    assert len(seen) == 500
    bad = [(i, a, b) for i, (a, b) in enumerate(itertools.pairwise(seen)) if b <= a]
    assert not bad, (bad[:10], len(seen))
    stop.set()
    await asyncio.wait_for(task, 2)
    await tick_task


async def test_stop_closes_the_socket_promptly() -> None:
    server, stop, task = await _serving(FakeEngine())
    endpoint = server.endpoint
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(task, 1)
    # The port is free again: a new server can bind it.
    again = ControlServer(endpoint, TOKEN, FakeEngine().handle)
    assert again.endpoint == endpoint
    stop2 = asyncio.Event()
    stop2.set()
    await again.serve(stop2)


def test_serve_on_uvloop() -> None:
    uvloop = pytest.importorskip("uvloop")
    engine = FakeEngine()

    async def main() -> dict[str, Any]:
        server, stop, task = await _serving(engine)
        with ControlClient(server.endpoint, TOKEN) as client:
            reply: dict[str, Any] = await asyncio.to_thread(client.request, "halt")
        stop.set()
        await task
        return reply

    assert uvloop.run(main())["result"] == {"state": "HALTED"}


@pytest.mark.parametrize(
    "endpoint",
    ["tcp://0.0.0.0:7002", "tcp://*:7002", "tcp://10.0.0.5:7002", "tcp://127.0.0.1:x", "ipc://"],
)
def test_non_local_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(ValueError, match="not local"):
        ControlServer(endpoint, TOKEN, FakeEngine().handle)


def test_local_endpoints_are_accepted(tmp_path: Path) -> None:
    assert check_endpoint("tcp://localhost:7002") == "tcp://127.0.0.1:7002"
    assert check_endpoint("tcp://127.0.0.1:*") == "tcp://127.0.0.1:*"
    ipc = f"ipc://{tmp_path}/control.sock"
    assert check_endpoint(ipc) == ipc


def test_empty_token_is_refused() -> None:
    with pytest.raises(ControlError, match=r"token .* is empty: generate one"):
        ControlServer("tcp://127.0.0.1:0", "", FakeEngine().handle)


def test_resolve_token_creates_a_private_file_once(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with pytest.raises(ConfigError, match="no control token"):
        read_token({}, data_dir)
    token = resolve_token({}, data_dir)
    path = data_dir / "control.token"
    assert len(token) >= 40
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert resolve_token({}, data_dir) == token
    assert read_token({}, data_dir) == token
    assert resolve_token({}, tmp_path / "other") != token


def test_env_token_wins(tmp_path: Path) -> None:
    resolve_token({}, tmp_path)
    from_env = "from-env-token-0123456789abcdefghij"
    env = {"CHIMERA_CONTROL_TOKEN": from_env}
    assert resolve_token(env, tmp_path) == from_env
    assert read_token(env, tmp_path / "nowhere") == from_env
    assert not (tmp_path / "nowhere").exists()


def test_empty_token_file_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "control.token").write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve_token({}, tmp_path)


@pytest.mark.timeout(30)
def test_a_client_dropped_without_close_never_hangs_the_garbage_collector() -> None:
    """A caller that raises after a request leaves its client (and its open socket) to the
    garbage collector, possibly inside a reference cycle; collecting it must not block."""
    import gc

    ctx = zmq.Context.instance()
    server = ctx.socket(zmq.ROUTER)
    port = server.bind_to_random_port("tcp://127.0.0.1")
    try:
        client = ControlClient(f"tcp://127.0.0.1:{port}", TOKEN, timeout_s=2.0)
        done = threading.Event()

        def answer() -> None:
            ident, empty, payload = server.recv_multipart()
            rid = orjson.loads(payload)["id"]
            server.send_multipart([ident, empty, orjson.dumps({"ok": True, "id": rid})])
            done.set()

        t = threading.Thread(target=answer)
        t.start()
        assert client.request("status")["ok"] is True
        t.join(5)
        assert done.is_set()
        client.cycle = client  # type: ignore[attr-defined]  # as a traceback frame can hold it
        del client
        started = time.monotonic()
        gc.collect()
        assert time.monotonic() - started < 5.0
    finally:
        server.close(linger=0)


async def test_a_flood_of_refused_requests_logs_a_bounded_number_of_lines() -> None:
    """Refused and malformed requests are counted exactly, but logged at most a few times
    per interval plus one ``*_suppressed`` summary: a flood must not fill the disk."""
    engine = FakeEngine()
    with capture_logs() as logs:
        server, stop, task = await _serving(engine)

        def flood() -> int:
            ctx = zmq.Context()
            sock = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVTIMEO, 5000)
            sock.connect(server.endpoint)
            bad = orjson.dumps({"token": "x" * 40, "command": "halt", "arg": "", "id": "f"})
            for i in range(600):
                sock.send_multipart([b"", bad if i % 2 else b"{garbage"])
            got = sum(1 for _ in range(600) if sock.recv_multipart())
            sock.close()
            ctx.term()
            return got

        assert await asyncio.to_thread(flood) == 600
        stop.set()
        await asyncio.wait_for(task, 2)
    assert server.refused == 300 and server.malformed == 300 and engine.state == "ACTIVE"
    for event in ("control_refused", "control_malformed"):
        shown = [e for e in logs if e["event"] == event]
        summary = [e for e in logs if e["event"] == f"{event}_suppressed"]
        assert 1 <= len(shown) <= 10, (event, len(shown))
        # The summary at shutdown accounts for every request that was not logged.
        assert len(summary) == 1 and summary[0]["suppressed"] == 300 - len(shown)


# -- replay, freshness and token strength ------------------------------------------------


class Sniffer(threading.Thread):
    """A ROUTER in front of the engine that records every request payload it passes on,
    as anyone able to read the loopback traffic (or a proxy) could."""

    def __init__(self, upstream: str | None) -> None:
        super().__init__(daemon=True)
        self.ctx = zmq.Context()
        self.front = self.ctx.socket(zmq.ROUTER)
        self.front.setsockopt(zmq.LINGER, 0)
        self.endpoint = f"tcp://127.0.0.1:{self.front.bind_to_random_port('tcp://127.0.0.1')}"
        self.upstream = upstream
        self.captured: list[bytes] = []
        self.done = threading.Event()

    def run(self) -> None:
        back = self.ctx.socket(zmq.DEALER)
        back.setsockopt(zmq.LINGER, 0)
        if self.upstream:
            back.connect(self.upstream)
        while not self.done.is_set():
            if not self.front.poll(50):
                continue
            ident, empty, payload = self.front.recv_multipart()
            self.captured.append(payload)
            if self.upstream:  # else swallow it: the engine never sees the original
                back.send_multipart([empty, payload])
                if back.poll(2000):
                    self.front.send_multipart([ident, *back.recv_multipart()])
        back.close()

    def close(self) -> None:
        self.done.set()
        self.join(2)
        self.front.close()
        self.ctx.term()


async def test_a_captured_request_resent_on_a_raw_socket_is_refused() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    sniffer = Sniffer(server.endpoint)
    sniffer.start()
    try:
        with ControlClient(sniffer.endpoint, TOKEN) as client:
            assert (await _in_thread(client.request, "pause"))["ok"] is True
            assert (await _in_thread(client.request, "resume"))["ok"] is True
        assert engine.state == "ACTIVE" and len(sniffer.captured) == 2
        pause = sniffer.captured[0]
        # The token never crossed the wire, so the capture cannot be turned into others.
        assert TOKEN.encode() not in pause
        with capture_logs() as logs:
            again = await _in_thread(_raw_request, server.endpoint, pause)
            # Nor can it be altered: the same request with another command fails the MAC.
            forged = orjson.loads(pause)
            forged["command"], forged["nonce"] = "halt", os.urandom(16).hex()
            altered = await _in_thread(_raw_request, server.endpoint, orjson.dumps(forged))
        assert again["ok"] is False and again["error"] == "refused: replayed request"
        assert altered["ok"] is False and altered["error"] == "refused: bad token"
        assert engine.state == "ACTIVE" and server.served == 2 and server.refused == 2
        assert [e["reason"] for e in logs if e["event"] == "control_refused"] == [
            "replayed",
            "mismatch",
        ]
        # Normal commands still work afterwards.
        with ControlClient(server.endpoint, TOKEN) as client:
            assert (await _in_thread(client.request, "halt"))["result"] == {"state": "HALTED"}
    finally:
        sniffer.close()
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_who_asked_is_signed_and_reaches_the_handler() -> None:
    engine = FakeEngine()
    server, stop, task = await _serving(engine)
    sniffer = Sniffer(server.endpoint)
    sniffer.start()
    try:
        with ControlClient(sniffer.endpoint, TOKEN, by="cli:alice") as client:
            assert (await _in_thread(client.request, "pause"))["ok"] is True
            resume = partial(client.request, "resume", by="telegram:42")
            assert (await _in_thread(resume))["ok"] is True
        with ControlClient(server.endpoint, TOKEN) as anonymous:  # says nothing: ""
            assert (await _in_thread(anonymous.request, "status"))["ok"] is True
        assert engine.by == ["cli:alice", "telegram:42", ""]
        # Who asked cannot be changed on the way: it is under the MAC.
        forged = orjson.loads(sniffer.captured[0])
        forged["by"], forged["nonce"] = "telegram:1", os.urandom(16).hex()
        altered = await _in_thread(_raw_request, server.endpoint, orjson.dumps(forged))
        assert altered["ok"] is False and altered["error"] == "refused: bad token"
        # Nor dropped: a request signed with it no longer verifies without it.
        del forged["by"]
        dropped = await _in_thread(_raw_request, server.endpoint, orjson.dumps(forged))
        assert dropped["error"] == "refused: bad token" and len(engine.by) == 3
    finally:
        sniffer.close()
        stop.set()
        await asyncio.wait_for(task, 2)


class WallClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("skew_s", [-31.0, 31.0, 3600.0])
async def test_a_request_outside_the_time_window_is_refused(skew_s: float) -> None:
    """A request captured (never delivered) and sent later, or one from a clock that is off,
    is refused as stale; the same request inside the window would have been served."""
    engine = FakeEngine()
    clock = WallClock()
    server = ControlServer("tcp://127.0.0.1:0", TOKEN, engine.handle, clock=clock, max_skew_s=30)
    stop = asyncio.Event()
    task = asyncio.create_task(server.serve(stop))
    sniffer = Sniffer(None)
    sniffer.start()
    try:
        with (
            ControlClient(sniffer.endpoint, TOKEN, timeout_s=0.3) as client,
            pytest.raises(ControlError, match="no reply"),
        ):
            await _in_thread(client.request, "halt")
        captured = sniffer.captured[0]
        clock.now += skew_s
        late = await _in_thread(_raw_request, server.endpoint, captured)
        assert late["ok"] is False and late["error"] == "refused: stale request"
        assert engine.state == "ACTIVE" and server.served == 0
        clock.now -= skew_s - 29.0 if skew_s > 0 else skew_s + 29.0  # 29 s off: still fresh
        in_time = await _in_thread(_raw_request, server.endpoint, captured)
        assert in_time["ok"] is True and engine.state == "HALTED"
        # The client explains a stale refusal as a clock problem.
        clock.now += 120
        with (
            ControlClient(server.endpoint, TOKEN) as client,
            pytest.raises(ControlError, match=r"stale.*differ by more than 30"),
        ):
            await _in_thread(client.request, "status")
    finally:
        sniffer.close()
        stop.set()
        await asyncio.wait_for(task, 2)


async def test_nonces_are_forgotten_only_after_the_window_has_closed() -> None:
    engine = FakeEngine()
    clock = WallClock()
    server = ControlServer("tcp://127.0.0.1:0", TOKEN, engine.handle, clock=clock, max_skew_s=30)
    sent_ms = int(clock.now * 1000)
    payload = encode_request(TOKEN, "pause", rid="r", ts_ms=sent_ms)
    assert orjson.loads(server.answer(payload))["ok"] is True
    for advance in (1.0, 29.0, 30.0, 59.0, 3600.0):
        clock.now = sent_ms / 1000 + advance
        reply = orjson.loads(server.answer(payload))
        assert reply["ok"] is False
        assert reply["error"] == (
            "refused: replayed request" if advance <= 30 else "refused: stale request"
        )
    assert server.served == 1
    stop = asyncio.Event()
    stop.set()
    await server.serve(stop)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        ("a", "is 1 characters; at least 32"),
        ("0123456789abcdef0123456789abcde", "is 31 characters"),
        ("ab" * 20, "not random"),
        ("", "is empty"),
    ],
)
def test_a_weak_token_is_refused_everywhere(tmp_path: Path, token: str, why: str) -> None:
    handler = FakeEngine().handle
    with pytest.raises(ControlError, match=why) as info:
        ControlServer("tcp://127.0.0.1:0", token, handler)
    assert "secrets.token_hex(16)" in str(info.value)
    if token:
        with pytest.raises(ControlError, match=why):
            resolve_token({"CHIMERA_CONTROL_TOKEN": token}, tmp_path)
        with pytest.raises(ControlError, match=why):
            read_token({"CHIMERA_CONTROL_TOKEN": token}, tmp_path)
        (tmp_path / "control.token").write_text(token + "\n")
        with pytest.raises(ControlError, match=rf"control.token is|{why}") as from_file:
            read_token({}, tmp_path)
        assert str(tmp_path / "control.token") in str(from_file.value)
        with pytest.raises(ControlError, match=why):
            resolve_token({}, tmp_path)
        with pytest.raises(ControlError, match=why):
            ControlClient("tcp://127.0.0.1:1", token)
        # The message never repeats the token itself.
        assert (len(token) < 4) or token not in str(from_file.value)


def test_a_generated_token_is_accepted() -> None:
    token = os.urandom(16).hex()
    assert len(token) == MIN_TOKEN_CHARS
    ControlClient("tcp://127.0.0.1:1", token).close()
