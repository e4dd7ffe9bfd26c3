"""Operator control channel: a ZeroMQ ROUTER served on the hot-path event loop.

The server awaits one request at a time, calls the engine's handler synchronously on the
loop thread (so the handler needs no locks) and replies at once. It yields to the loop
after every request, so a flood of commands cannot starve tick processing.

Wire format (JSON): request ``{"token", "command", "arg", "id"}``; reply
``{"ok", "command", "id", "result"}`` or ``{"ok": false, "error", ...}``.
"""

from __future__ import annotations

import hmac
import itertools
import os
import secrets
import stat
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
import zmq

from chimera_core.errors import ChimeraError, ConfigError

if TYPE_CHECKING:
    import asyncio

    import zmq.asyncio


class _Log:
    """This module's structlog logger, imported on first use: `chimera kill` is a fresh
    process, and structlog + asyncio would double its start-up time before HALT."""

    def __getattr__(self, name: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(__name__), name)


log = _Log()

COMMANDS = ("status", "pause", "resume", "halt", "flatten", "approve", "reject")
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7002"
TOKEN_ENV = "CHIMERA_CONTROL_TOKEN"
TOKEN_FILE = "control.token"
REFUSED = "refused: bad token"
# Control messages are tiny; anything bigger is garbage or an attack, and zmq drops it.
MAX_MESSAGE_BYTES = 64 * 1024
# Read-only queries are logged at debug: the cortex polls status every second.
_QUIET = frozenset({"status"})
# Refused and malformed requests: this many log lines per interval, then one summary.
LOG_BURST = 10
LOG_INTERVAL_S = 60.0

Handler = Callable[[str, str], tuple[bool, dict[str, Any]]]


class ControlError(ChimeraError):
    """The control channel failed: no reply, a refused token, or a malformed reply."""


def check_endpoint(endpoint: str) -> str:
    """The endpoint to bind, if it is local only (loopback TCP or ipc); else ValueError."""
    if endpoint.startswith("ipc://") and len(endpoint) > len("ipc://"):
        return endpoint
    for host in ("tcp://127.0.0.1:", "tcp://localhost:"):
        if endpoint.startswith(host):
            port = endpoint[len(host) :]
            if port == "*" or (port.isdigit() and int(port) <= 65535):
                # zmq binds to addresses, not host names.
                return "tcp://127.0.0.1:" + port
    raise ValueError(
        f"control endpoint {endpoint!r} is not local: the control channel binds only "
        "tcp://127.0.0.1:PORT, tcp://localhost:PORT or ipc://PATH"
    )


class ControlServer:
    """ROUTER socket answering operator commands; bound in ``__init__``, served by ``serve``."""

    def __init__(
        self,
        endpoint: str,
        token: str,
        handler: Handler,
        ctx: zmq.asyncio.Context | None = None,
    ) -> None:
        if not token:
            raise ValueError("control token is empty: use resolve_token() to get one")
        bind_to = check_endpoint(endpoint)
        self._token = token.encode()
        self._handler = handler
        from chimera_core.logging import RateLimiter  # the CLI client never needs it

        # A flood of bad requests is counted in full but logged only a few times.
        self._log_limiter = RateLimiter(log, burst=LOG_BURST, interval_s=LOG_INTERVAL_S)
        self._own_ctx = ctx is None
        import zmq.asyncio  # the server lives in the engine's loop; the CLI never needs it

        self._ctx = zmq.asyncio.Context() if ctx is None else ctx
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        try:
            self._sock.bind(bind_to)
        except zmq.ZMQError as exc:
            self._close()
            raise ControlError(
                f"cannot bind the control channel to {endpoint}: {exc} "
                "(is another engine running? change [control] endpoint)"
            ) from exc
        last = self._sock.getsockopt(zmq.LAST_ENDPOINT)
        self.endpoint: str = last.decode() if isinstance(last, bytes) else str(last)
        self.refused = 0
        self.served = 0
        self.malformed = 0

    async def serve(self, stop: asyncio.Event) -> None:
        import asyncio

        """Answer requests until ``stop`` is set, then close the socket."""
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                # pyzmq returns a Future here; ensure_future passes it through unchanged.
                recv = asyncio.ensure_future(self._sock.recv_multipart())
                if not recv.done():
                    await asyncio.wait((recv, stopping), return_when=asyncio.FIRST_COMPLETED)
                    if not recv.done():
                        recv.cancel()
                        break
                frames: list[bytes] = recv.result()
                if len(frames) < 2:
                    continue
                reply = self.answer(frames[-1])
                # ROUTER drops replies to vanished peers instead of blocking.
                await self._sock.send_multipart([*frames[:-1], reply])
                # A ready recv completes without suspending; yield so ticks keep flowing.
                await asyncio.sleep(0)
        finally:
            stopping.cancel()
            self._close()

    def answer(self, payload: bytes) -> bytes:
        """The encoded reply to one request payload. Never raises."""
        self._log_limiter.flush()  # summaries of floods that are over
        try:
            request = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return self._malformed("not JSON")
        if not isinstance(request, dict):
            return self._malformed("not a JSON object")
        rid = request.get("id")
        presented = request.get("token")
        if not (
            isinstance(presented, str) and hmac.compare_digest(presented.encode(), self._token)
        ):
            self.refused += 1
            # Neither the expected nor the presented token is logged.
            if self._log_limiter.allow("control_refused"):
                log.warning(
                    "control_refused",
                    command=str(request.get("command"))[:32],
                    id=str(rid)[:64],
                    reason="missing" if presented is None else "mismatch",
                )
            return orjson.dumps({"ok": False, "id": rid, "error": REFUSED})
        command = request.get("command")
        arg = request.get("arg", "")
        if not isinstance(command, str) or not isinstance(arg, str):
            return self._malformed("'command' and 'arg' must be strings", rid)
        if command not in COMMANDS:
            return orjson.dumps(
                {
                    "ok": False,
                    "command": command,
                    "id": rid,
                    "error": f"unknown command {command!r} (allowed: {', '.join(COMMANDS)})",
                }
            )
        self.served += 1
        try:
            ok, result = self._handler(command, arg)
            reply = orjson.dumps({"ok": bool(ok), "command": command, "id": rid, "result": result})
        except Exception as exc:
            # The engine must survive a bad command; the operator sees why it failed.
            log.exception("control_handler_failed", command=command, arg=arg, id=rid)
            return orjson.dumps(
                {
                    "ok": False,
                    "command": command,
                    "id": rid,
                    "error": f"handler failed: {type(exc).__name__}: {exc}",
                }
            )
        emit = log.debug if command in _QUIET else log.info
        emit("control_served", command=command, arg=arg, id=rid, ok=bool(ok))
        return reply

    def _malformed(self, why: str, rid: Any = None) -> bytes:
        self.malformed += 1
        if self._log_limiter.allow("control_malformed"):
            log.warning("control_malformed", reason=why)
        return orjson.dumps(
            {
                "ok": False,
                "id": rid,
                "error": f'malformed request: {why} (expected {{"token", "command", "arg", "id"}})',
            }
        )

    def _close(self) -> None:
        self._log_limiter.flush(final=True)
        self._sock.close(linger=0)
        if self._own_ctx:
            self._ctx.term()


class ControlClient:
    """Synchronous client for the CLI and the cortex. Thread-safe; one DEALER socket."""

    def __init__(self, endpoint: str, token: str, timeout_s: float = 2.0) -> None:
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self._token = token
        # The process-wide context: a client dropped without close() (an exception on the
        # way) leaves only a LINGER=0 socket, which its finaliser closes. A private context
        # would be terminated by the garbage collector, which then waits for that socket
        # for ever (seen: a failed test hung the suite in an unrelated test's GC).
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count(1)

    def request(self, command: str, arg: str = "") -> dict[str, Any]:
        """Send one command and return the engine's reply dict.

        Raises ControlError when no reply arrives in time, the token is refused, or the
        reply is not JSON. A not-ok reply for any other reason is returned, not raised.
        """
        rid = f"{self._prefix}-{next(self._seq)}"
        payload = orjson.dumps({"token": self._token, "command": command, "arg": arg, "id": rid})
        with self._lock:
            sock = self._socket()
            deadline = time.monotonic() + self.timeout_s
            try:
                sock.send_multipart([b"", payload])
            except zmq.Again:
                self._reset()
                raise self._no_reply() from None
            while True:
                remaining_ms = int((deadline - time.monotonic()) * 1000)
                if remaining_ms <= 0 or not sock.poll(remaining_ms, zmq.POLLIN):
                    # Drop the socket: a late reply must not be read as the next one's.
                    self._reset()
                    raise self._no_reply()
                frames = sock.recv_multipart()
                try:
                    reply = orjson.loads(frames[-1])
                except orjson.JSONDecodeError:
                    raise ControlError(
                        f"the engine at {self.endpoint} sent a reply that is not JSON"
                    ) from None
                if not isinstance(reply, dict):
                    raise ControlError(f"the engine at {self.endpoint} sent a non-object reply")
                # Replies to earlier, timed-out requests carry their own id: skip them.
                if reply.get("id", rid) in (rid, None):
                    break
        if reply.get("error") == REFUSED:
            raise ControlError(
                f"the engine at {self.endpoint} refused the control token: use the same "
                f"{TOKEN_ENV} or data_dir/{TOKEN_FILE} as the running engine"
            )
        return reply

    def close(self) -> None:
        with self._lock:
            self._reset()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _socket(self) -> zmq.Socket[bytes]:
        if self._sock is None:
            ms = max(1, int(self.timeout_s * 1000))
            sock: zmq.Socket[bytes] = self._ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDTIMEO, ms)
            sock.setsockopt(zmq.RCVTIMEO, ms)
            # Without a live peer, send times out instead of queueing for a later engine.
            sock.setsockopt(zmq.IMMEDIATE, 1)
            sock.connect(self.endpoint)
            self._sock = sock
        return self._sock

    def _reset(self) -> None:
        if self._sock is not None:
            self._sock.close(linger=0)
            self._sock = None

    def _no_reply(self) -> ControlError:
        return ControlError(
            f"no reply from the engine at {self.endpoint} within {self.timeout_s:g}s: "
            "is `chimera live` running?"
        )


def _token_from(env: Mapping[str, str], path: Path) -> str | None:
    from_env = env.get(TOKEN_ENV, "").strip()
    if from_env:
        return from_env
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        raise ConfigError(f"control token file {path} is empty (delete it to get a new token)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("control_token_file_open", path=str(path), fix=f"chmod 600 {path}")
    return text


def resolve_token(env: Mapping[str, str], data_dir: Path) -> str:
    """The control token: $CHIMERA_CONTROL_TOKEN, else data_dir/control.token, else a new one.

    A new token is written to data_dir/control.token with mode 0600.
    """
    path = Path(data_dir) / TOKEN_FILE
    found = _token_from(env, path)
    if found is not None:
        return found
    path.parent.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        # Another process created it between our read and our create: use theirs.
        return read_token(env, data_dir)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    log.info("control_token_created", path=str(path))
    return token


def read_token(env: Mapping[str, str], data_dir: Path) -> str:
    """The control token as ``resolve_token`` finds it; ConfigError if there is none."""
    path = Path(data_dir) / TOKEN_FILE
    found = _token_from(env, path)
    if found is None:
        raise ConfigError(
            f"no control token: {TOKEN_ENV} is not set and {path} does not exist "
            "(start `chimera live` once to create it, or set the data_dir the engine uses)"
        )
    return found
