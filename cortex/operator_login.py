"""The cortex operator's login: a password typed in the browser, checked against a salted
scrypt hash, before the cortex sends any command for that browser session.

The cortex holds the engine's control token; without this gate anyone who reaches its
port could HALT, flatten or approve. The hash lives in ``data_dir/cortex.password``
(mode 0600, written by ``chimera cortex --set-password``) or in
``$CHIMERA_CORTEX_PASSWORD_HASH`` (the same one-line text); never the password itself.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path

import structlog

from chimera_core.errors import ConfigError
from chimera_core.logging import RateLimiter

log = structlog.get_logger(__name__)

PASSWORD_FILE = "cortex.password"
PASSWORD_HASH_ENV = "CHIMERA_CORTEX_PASSWORD_HASH"
MIN_PASSWORD_CHARS = 10
SCHEME = "scrypt"
# scrypt cost: ~16 MiB and ~50 ms per check here, so a guess costs the guesser too.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
_DKLEN = 32
_MAXMEM = 256 * 2**20  # 128·r·N at the largest costs _parse accepts, with room
# Wrong passwords: this many per window (process-wide) before logins pause for the window.
MAX_FAILURES = 5
FAILURE_WINDOW_S = 60.0
# A browser session stays logged in this long (then the password is asked again).
LOGIN_TTL_S = 8 * 3600.0


def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """The one-line stored form: ``scrypt$N$r$p$<salt hex>$<hash hex>``."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ConfigError(
            f"the operator password is {len(password)} characters; use at least "
            f"{MIN_PASSWORD_CHARS} (a passphrase of a few words is easiest to type)"
        )
    salt = secrets.token_bytes(16) if salt is None else salt
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, dklen=_DKLEN
    )
    return f"{SCHEME}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${digest.hex()}"


def _parse(stored: str, source: str) -> tuple[int, int, int, bytes, bytes]:
    parts = stored.strip().split("$")
    try:
        scheme, n, r, p, salt, digest = parts
        if scheme != SCHEME:
            raise ValueError(scheme)
        values = int(n), int(r), int(p), bytes.fromhex(salt), bytes.fromhex(digest)
    except ValueError:
        raise ConfigError(
            f"the operator password hash in {source} is not in the form "
            f"scrypt$N$r$p$SALT$HASH: set it again with `chimera cortex --set-password`"
        ) from None
    # Bounds keep a tampered file from making every check take minutes or all memory.
    if not (2 <= values[0] <= 2**17 and 1 <= values[1] <= 8 and 1 <= values[2] <= 4):
        raise ConfigError(f"the operator password hash in {source} has out-of-range costs")
    if len(values[3]) < 8 or len(values[4]) < 16:
        raise ConfigError(f"the operator password hash in {source} is too short")
    return values


def verify_password(password: str, stored: str, source: str = "the stored hash") -> bool:
    """True if ``password`` matches the stored hash (constant-time comparison)."""
    n, r, p, salt, digest = _parse(stored, source)
    candidate = hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, dklen=len(digest), maxmem=_MAXMEM
    )
    return hmac.compare_digest(candidate, digest)


def password_path(data_dir: Path) -> Path:
    return Path(data_dir) / PASSWORD_FILE


def load_password_hash(env: Mapping[str, str], data_dir: Path) -> tuple[str, str] | None:
    """(stored hash, where it came from), or None when no operator password is set.

    A malformed hash raises ConfigError, so the operator learns it at start, not at login.
    """
    from_env = env.get(PASSWORD_HASH_ENV, "").strip()
    if from_env:
        _parse(from_env, f"${PASSWORD_HASH_ENV}")
        return from_env, f"${PASSWORD_HASH_ENV}"
    path = password_path(data_dir)
    try:
        text = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    if path.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        log.warning("cortex_password_file_open", path=str(path), fix=f"chmod 600 {path}")
    _parse(text, str(path))
    return text, str(path)


def write_password_hash(data_dir: Path, stored: str) -> Path:
    """Write the hash to data_dir/cortex.password, mode 0600, replacing any old one whole."""
    path = password_path(data_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(stored + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


class OperatorLogins:
    """Checks passwords and remembers which browser sessions are logged in.

    Shared by every browser session of one cortex process; thread-safe (Streamlit runs
    each session's script in its own thread). Wrong passwords are counted process-wide:
    after ``MAX_FAILURES`` within ``FAILURE_WINDOW_S`` every login waits out the window.
    """

    def __init__(
        self,
        load_hash: Callable[[], tuple[str, str] | None],
        clock: Callable[[], float] = time.monotonic,
        ttl_s: float = LOGIN_TTL_S,
    ) -> None:
        # Read on every attempt, so `--set-password` takes effect without a restart.
        self._load_hash = load_hash
        self._clock = clock
        self._ttl_s = ttl_s
        self._lock = threading.Lock()
        self._sessions: dict[str, float] = {}  # login id -> expiry
        self._failures: deque[float] = deque()
        self._log_limiter = RateLimiter(log, burst=MAX_FAILURES, interval_s=FAILURE_WINDOW_S)

    def configured(self) -> bool:
        try:
            return self._load_hash() is not None
        except ConfigError:
            return False

    def locked_for_s(self) -> float:
        """Seconds until a login may be tried again (0 when it may now)."""
        with self._lock:
            return self._locked_for(self._clock())

    def _locked_for(self, now: float) -> float:
        while self._failures and self._failures[0] <= now - FAILURE_WINDOW_S:
            self._failures.popleft()
        if len(self._failures) < MAX_FAILURES:
            return 0.0
        return self._failures[0] + FAILURE_WINDOW_S - now

    def login(self, password: str) -> tuple[str | None, str]:
        """(login id, "") on the right password, else (None, why) for the operator."""
        with self._lock:
            wait = self._locked_for(self._clock())
        if wait > 0:
            return None, f"too many wrong passwords: try again in {wait:.0f} s"
        try:
            found = self._load_hash()
        except ConfigError as exc:
            return None, str(exc)
        if found is None:
            return None, "no operator password is set: run `chimera cortex --set-password`"
        stored, source = found
        ok = verify_password(password, stored, source)
        with self._lock:
            now = self._clock()
            if not ok:
                self._failures.append(now)
                if self._log_limiter.allow("cortex_login_failed"):
                    log.warning("cortex_login_failed", failures=len(self._failures))
                return None, "wrong password"
            login_id = secrets.token_urlsafe(24)
            self._sessions = {k: v for k, v in self._sessions.items() if v > now}
            self._sessions[login_id] = now + self._ttl_s
        log.info("cortex_login")
        return login_id, ""

    def valid(self, login_id: str | None) -> bool:
        """True while ``login_id`` is a live login of this process."""
        if not login_id:
            return False
        with self._lock:
            expiry = self._sessions.get(login_id)
            if expiry is None:
                return False
            if expiry <= self._clock():
                del self._sessions[login_id]
                return False
            return True

    def logout(self, login_id: str | None) -> None:
        with self._lock:
            if login_id is not None and self._sessions.pop(login_id, None) is not None:
                log.info("cortex_logout")
