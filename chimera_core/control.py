"""Operator control channel: a ZeroMQ ROUTER served on the hot-path event loop.

The server awaits one request at a time, calls the engine's handler synchronously on the
loop thread (so the handler needs no locks) and replies at once. It yields to the loop
after every request, so a flood of commands cannot starve tick processing.

Wire format (JSON): request ``{"v": 2, "command", "arg", "id", "nonce", "ts_ms", "mac"}``
and optionally ``"by"``, who asked (``cli:<user>``, ``telegram:<user id>``, ``cortex``), signed
with the rest and recorded with the command and on a decided approval; reply
``{"ok", "command", "id", "result"}`` or ``{"ok": false, "error", ...}``.

The token itself never travels: ``mac`` is HMAC-SHA256 with the token as key over the
request's fields (``request_mac``), so a captured request cannot be altered, and it
carries a random ``nonce`` and the sender's wall-clock ``ts_ms``: the server refuses a
request more than ``MAX_SKEW_S`` away from its own clock and any nonce it has already
accepted within that window, so a captured request cannot be replayed either.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import orjson
import zmq

from chimera_core.commands import Command
from chimera_core.errors import ChimeraError, ConfigError
from chimera_core.lazylog import LazyLogger

if TYPE_CHECKING:
    import asyncio

    import zmq.asyncio


# `chimera kill` is a fresh process: structlog is imported only when something is logged.
log = LazyLogger(__name__)


COMMANDS: tuple[str, ...] = tuple(c.value for c in Command)
DEFAULT_ENDPOINT = "tcp://127.0.0.1:7002"
TOKEN_ENV = "CHIMERA_CONTROL_TOKEN"
TOKEN_FILE = "control.token"
REFUSED = "refused: bad token"
REFUSED_STALE = "refused: stale request"
REFUSED_REPLAY = "refused: replayed request"
REFUSED_BUSY = "refused: too many requests"
PROTOCOL_VERSION = 2
# A request is fresh for this long either side of the engine's clock; its nonce is kept
# for twice as long, past the last moment the timestamp check alone would accept it.
MAX_SKEW_S = 30.0
# Only a token holder can add nonces (the MAC is checked first); this caps the memory
# one can spend: 100k requests in a minute is ~1.7k/s, far above any operator's use.
MAX_NONCES = 100_000
# 128 bits as 32 hex characters; the generated token (token_urlsafe(32)) has 43.
MIN_TOKEN_CHARS = 32
_MIN_DISTINCT_CHARS = 8
GENERATE_HINT = (
    "generate one with `python -c 'import secrets; print(secrets.token_hex(16))'` and put "
    f"it in {TOKEN_ENV} or data_dir/{TOKEN_FILE} (mode 0600), or delete data_dir/"
    f"{TOKEN_FILE} and let `chimera live` create one"
)
# Control messages are tiny; anything bigger is garbage or an attack, and zmq drops it.
MAX_MESSAGE_BYTES = 64 * 1024
# Read-only queries are logged at debug: the cortex polls status every second.
_QUIET = frozenset({"status", "alert"})  # alert: chimera notify republishing what it sent
# Refused and malformed requests: this many log lines per interval, then one summary.
LOG_BURST = 10
LOG_INTERVAL_S = 60.0

# handler(command, arg, by): by is who asked ("" when the client did not say).
Handler = Callable[[str, str, str], tuple[bool, dict[str, Any]]]
MAX_BY_CHARS = 128
_FIELDS = '{"v", "command", "arg", "id", "nonce", "ts_ms", "mac"} and optionally "by"'
_SIGN_HINT = (
    "requests no longer carry the token: sign them with it "
    "(chimera_core.control.encode_request or ControlClient)"
)


class ControlError(ChimeraError):
    """The control channel failed: no reply, a refused token, or a malformed reply."""


def check_token(token: str, source: str) -> str:
    """``token`` if it is long and varied enough to guard the kill switch; else ControlError.

    ``source`` names where it came from (never the token itself) for the message.
    """
    if not token:
        raise ControlError(f"the control token from {source} is empty: {GENERATE_HINT}")
    if len(token) < MIN_TOKEN_CHARS:
        raise ControlError(
            f"the control token from {source} is {len(token)} characters; at least "
            f"{MIN_TOKEN_CHARS} (128 bits as hex) are needed: {GENERATE_HINT}"
        )
    if len(set(token)) < _MIN_DISTINCT_CHARS:
        raise ControlError(
            f"the control token from {source} is not random (only {len(set(token))} "
            f"distinct characters): {GENERATE_HINT}"
        )
    return token


def request_mac(token: str, request: Mapping[str, Any]) -> str:
    """HMAC-SHA256 (hex) of a request's signed fields, keyed with the control token."""
    signed = orjson.dumps(
        [
            "chimera-control",
            PROTOCOL_VERSION,
            request.get("command"),
            request.get("arg"),
            request.get("id"),
            request.get("nonce"),
            request.get("ts_ms"),
            # Only when present, so a request without it signs as it always did.
            *([request["by"]] if "by" in request else []),
        ]
    )
    return hmac.new(token.encode(), signed, hashlib.sha256).hexdigest()


def encode_request(
    token: str,
    command: str,
    arg: str = "",
    *,
    rid: str,
    ts_ms: int,
    nonce: str | None = None,
    by: str = "",
) -> bytes:
    """One signed request payload, as ``ControlClient`` sends it (for any other client).
    ``by`` says who asked; it is signed with the rest."""
    request: dict[str, Any] = {
        "v": PROTOCOL_VERSION,
        "command": command,
        "arg": arg,
        "id": rid,
        "nonce": secrets.token_hex(16) if nonce is None else nonce,
        "ts_ms": ts_ms,
    }
    if by:
        request["by"] = by
    request["mac"] = request_mac(token, request)
    return orjson.dumps(request)


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
        clock: Callable[[], float] = time.time,
        max_skew_s: float = MAX_SKEW_S,
    ) -> None:
        check_token(token, "the engine's configuration")
        bind_to = check_endpoint(endpoint)
        self._token = token
        self._handler = handler
        # Wall time on purpose: freshness is judged against the sender's clock, which
        # knows nothing of exchange time. Injectable for tests.
        self._clock = clock
        self._max_skew_ms = int(max_skew_s * 1000)
        self._nonces: set[str] = set()
        self._nonce_expiry: deque[tuple[int, str]] = deque()
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
        mac = request.get("mac")
        if not isinstance(mac, str):
            # A v1 client sent the token itself; it is not compared, only refused.
            if "token" in request:
                return self._refuse(request, "unsigned", hint=_SIGN_HINT)
            return self._refuse(request, "missing")
        if not hmac.compare_digest(mac.encode(), request_mac(self._token, request).encode()):
            return self._refuse(request, "mismatch")
        command = request.get("command")
        arg = request.get("arg", "")
        nonce = request.get("nonce")
        ts_ms = request.get("ts_ms")
        by = request.get("by", "")
        if not isinstance(command, str) or not isinstance(arg, str):
            return self._malformed("'command' and 'arg' must be strings", rid)
        if not isinstance(by, str) or len(by) > MAX_BY_CHARS or not by.isprintable():
            return self._malformed(
                f"'by' must be a printable string of at most {MAX_BY_CHARS} characters", rid
            )
        if not isinstance(nonce, str) or not 16 <= len(nonce) <= 128:
            return self._malformed("'nonce' must be a string of 16 to 128 characters", rid)
        if not isinstance(ts_ms, int) or isinstance(ts_ms, bool):
            return self._malformed("'ts_ms' must be an integer (ms since the epoch)", rid)
        now_ms = int(self._clock() * 1000)
        if abs(now_ms - ts_ms) > self._max_skew_ms:
            return self._refuse(request, "stale", REFUSED_STALE, now_ms=now_ms)
        while self._nonce_expiry and self._nonce_expiry[0][0] <= now_ms:
            self._nonces.discard(self._nonce_expiry.popleft()[1])
        if nonce in self._nonces:
            return self._refuse(request, "replayed", REFUSED_REPLAY)
        if len(self._nonces) >= MAX_NONCES:
            return self._refuse(request, "busy", REFUSED_BUSY)
        self._nonces.add(nonce)
        self._nonce_expiry.append((now_ms + 2 * self._max_skew_ms, nonce))
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
            ok, result = self._handler(command, arg, by)
            reply = orjson.dumps({"ok": bool(ok), "command": command, "id": rid, "result": result})
        except Exception as exc:
            # The engine must survive a bad command; the operator sees why it failed.
            log.exception("control_handler_failed", command=command, arg=arg, by=by, id=rid)
            return orjson.dumps(
                {
                    "ok": False,
                    "command": command,
                    "id": rid,
                    "error": f"handler failed: {type(exc).__name__}: {exc}",
                }
            )
        emit = log.debug if command in _QUIET else log.info
        emit("control_served", command=command, arg=arg, by=by, id=rid, ok=bool(ok))
        return reply

    def _refuse(
        self, request: dict[str, Any], reason: str, error: str = REFUSED, **extra: Any
    ) -> bytes:
        self.refused += 1
        rid = request.get("id")
        # Neither the token nor the MAC is logged.
        if self._log_limiter.allow("control_refused"):
            log.warning(
                "control_refused",
                command=str(request.get("command"))[:32],
                id=str(rid)[:64],
                reason=reason,
            )
        reply: dict[str, Any] = {"ok": False, "id": rid, "error": error, **extra}
        if error == REFUSED_STALE:
            reply["max_skew_s"] = self._max_skew_ms / 1000
        return orjson.dumps(reply)

    def _malformed(self, why: str, rid: Any = None) -> bytes:
        self.malformed += 1
        if self._log_limiter.allow("control_malformed"):
            log.warning("control_malformed", reason=why)
        return orjson.dumps(
            {
                "ok": False,
                "id": rid,
                "error": f"malformed request: {why} (expected {_FIELDS})",
            }
        )

    def _close(self) -> None:
        self._log_limiter.flush(final=True)
        self._sock.close(linger=0)
        if self._own_ctx:
            self._ctx.term()


class ControlClient:
    """Synchronous client for the CLI and the cortex. Thread-safe; one DEALER socket."""

    def __init__(self, endpoint: str, token: str, timeout_s: float = 2.0, *, by: str = "") -> None:
        self.endpoint = endpoint
        self.by = by  # who this client's requests are from, unless a request says
        self.timeout_s = timeout_s
        self._token = check_token(token, "this client's configuration")
        # The process-wide context: a client dropped without close() (an exception on the
        # way) leaves only a LINGER=0 socket, which its finaliser closes. A private context
        # would be terminated by the garbage collector, which then waits for that socket
        # for ever (seen: a failed test hung the suite in an unrelated test's GC).
        self._ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context.instance()
        self._sock: zmq.Socket[bytes] | None = None
        self._lock = threading.Lock()
        self._prefix = secrets.token_hex(4)
        self._seq = itertools.count(1)

    def request(self, command: str, arg: str = "", *, by: str = "") -> dict[str, Any]:
        """Send one command (from ``by``, else the client's ``by``) and return the
        engine's reply dict.

        Raises ControlError when no reply arrives in time, the token is refused, or the
        reply is not JSON. A not-ok reply for any other reason is returned, not raised.
        """
        rid = f"{self._prefix}-{next(self._seq)}"
        # Wall time: the engine checks it against its own clock (a side process may use it).
        payload = encode_request(
            self._token, command, arg, rid=rid, ts_ms=int(time.time() * 1000), by=by or self.by
        )
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
        error = reply.get("error")
        if error == REFUSED:
            raise ControlError(
                f"the engine at {self.endpoint} refused the control token: use the same "
                f"{TOKEN_ENV} or data_dir/{TOKEN_FILE} as the running engine"
            )
        if error == REFUSED_STALE:
            raise ControlError(
                f"the engine at {self.endpoint} refused the request as stale: this machine's "
                f"clock and the engine's differ by more than {reply.get('max_skew_s')} s "
                "(sync both clocks, e.g. with NTP)"
            )
        if isinstance(error, str) and error.startswith("refused:"):
            raise ControlError(f"the engine at {self.endpoint} {error}; try again")
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
        return check_token(from_env, f"${TOKEN_ENV}")
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if not text:
        raise ConfigError(f"control token file {path} is empty (delete it to get a new token)")
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("control_token_file_open", path=str(path), fix=f"chmod 600 {path}")
    return check_token(text, str(path))


def resolve_token(env: Mapping[str, str], data_dir: Path) -> str:
    """The control token: $CHIMERA_CONTROL_TOKEN, else data_dir/control.token, else a new one.

    A new token is written to data_dir/control.token with mode 0600. A token shorter than
    ``MIN_TOKEN_CHARS`` is refused with ControlError (it says how to make one).
    """
    path = Path(data_dir) / TOKEN_FILE
    found = _token_from(env, path)
    if found is not None:
        return found
    from chimera_core.sqlite_files import private_dir  # a server-side write: not on kill's path

    private_dir(path.parent)
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
