"""structlog JSON logging, configured once per process, with secret redaction.

Secrets are removed twice over: any key that names a secret has its value replaced,
and any registered secret value long enough to be told apart from ordinary data
(``MIN_SCRUBBED_LEN`` characters) is scrubbed from every string in the event, wherever
it appears (a URL, an exception text, a header dump). A short secret such as a 4-digit
MPIN is protected by key name only: scrubbing it from free text would rewrite every
instrument token, price or quantity that happens to equal it, and the rewritten fields
would tell a reader the PIN.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "***"
# Shorter registered values are not scrubbed from free text (see the module docstring).
MIN_SCRUBBED_LEN = 8
_SECRET_KEYS = frozenset(
    {
        "api_key", "apikey", "x_api_key", "password", "pin", "mpin", "totp", "totp_secret",
        "jwt", "jwt_token", "jwttoken", "access_token", "refresh_token", "refreshtoken",
        "feed_token", "feedtoken", "x_feed_token", "authorization", "secret", "control_token",
        "bot_token",
    }
)  # fmt: skip
# Any key ending in one of these names a secret too (x_password, chimera_totp_secret, ...);
# a bare "token" is an instrument token and stays.
_SECRET_SUFFIXES = (
    "password", "passwd", "secret", "mpin", "_pin", "api_key", "apikey", "_jwt", "jwt_token",
    "access_token", "refresh_token", "feed_token", "control_token", "_totp", "bot_token",
)  # fmt: skip


@functools.lru_cache(maxsize=4096)
def is_secret_key(key: str) -> bool:
    """True if a field named ``key`` holds a secret, whatever its case or separators."""
    k = key.lower().replace("-", "_")
    return k in _SECRET_KEYS or k.endswith(_SECRET_SUFFIXES)


class SecretRedactor:
    """structlog processor: scrubs secret keys and registered secret values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self._secrets: list[str] = []
        self.add(secrets)

    def add(self, secrets: Iterable[str]) -> None:
        """Register secret values; only those of ``MIN_SCRUBBED_LEN`` or more are scrubbed."""
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted(
            {*self._secrets, *(s for s in secrets if s and len(s) >= MIN_SCRUBBED_LEN)},
            key=len,
            reverse=True,
        )

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if is_secret_key(str(k)) else self._scrub(v) for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self._scrub(v) for v in value)
        if isinstance(value, bytes | int | float | bool) or value is None:
            return value
        return self._scrub(str(value))

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        for key in list(event_dict):
            if is_secret_key(key):
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self._scrub(event_dict[key])
        return event_dict


redactor = SecretRedactor()


class _Window:
    __slots__ = ("ends", "passed", "suppressed")

    def __init__(self, ends: float) -> None:
        self.ends = ends
        self.passed = 1
        self.suppressed = 0


class RateLimiter:
    """Passes the first ``burst`` log events of each name per ``interval_s``; counts the rest.

    A flood of one warning (malformed frames, refused control requests) would otherwise
    fill the disk and cost the hot path its throughput. The caller asks before it builds
    the log call, so a suppressed event costs a clock read and a dict lookup::

        if limiter.allow("frame_malformed"):
            log.warning("frame_malformed", size=len(frame))

    When a window that suppressed events is over, one ``<event>_suppressed`` line gives
    the count: on the next ``allow`` of that name, or on ``flush`` (call it now and then,
    and with ``final=True`` at shutdown). Not thread-safe: one limiter per thread/loop.
    """

    __slots__ = ("_burst", "_clock", "_interval", "_level", "_log", "_windows", "suppressed_total")

    def __init__(
        self,
        log: Any,
        burst: int = 10,
        interval_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        level: str = "warning",
    ) -> None:
        if burst < 1:
            raise ValueError(f"RateLimiter burst must be >= 1, got {burst}")
        if not interval_s > 0:
            raise ValueError(f"RateLimiter interval_s must be > 0, got {interval_s}")
        self._burst = burst
        self._interval = float(interval_s)
        self._clock = clock
        self._log = log
        self._level = level
        self._windows: dict[str, _Window] = {}
        self.suppressed_total = 0

    def allow(self, event: str) -> bool:
        """True if an event named ``event`` should be logged now."""
        now = self._clock()
        window = self._windows.get(event)
        if window is not None and now < window.ends:
            if window.passed < self._burst:
                window.passed += 1
                return True
            window.suppressed += 1
            self.suppressed_total += 1
            return False
        if window is not None and window.suppressed:
            self._summarise(event, window)
        self._windows[event] = _Window(now + self._interval)
        return True

    def flush(self, final: bool = False) -> None:
        """Log the suppressed count of every window that is over (every one if ``final``)."""
        now = self._clock()
        for event, window in list(self._windows.items()):
            if final or now >= window.ends:
                if window.suppressed:
                    self._summarise(event, window)
                del self._windows[event]

    def _summarise(self, event: str, window: _Window) -> None:
        # Looked up per summary (they are rare): the logger's configuration may change.
        getattr(self._log, self._level)(
            f"{event}_suppressed",
            suppressed=window.suppressed,
            passed=window.passed,
            interval_s=self._interval,
        )
        window.suppressed = 0


LOG_FORMATS = ("auto", "json", "console")
# ``--log-format`` on the command line, or CHIMERA_LOG_FORMAT (the demo sets it for the
# processes it starts): json for files and journald, console for a person at a terminal,
# auto = console when the stream is a terminal, else json.
LOG_FORMAT_ENV = "CHIMERA_LOG_FORMAT"
_log_format: str | None = None  # set by the command line; wins over the environment


def set_log_format(fmt: str | None) -> None:
    """Choose the renderer for every later ``configure_logging`` (one of LOG_FORMATS;
    None: back to CHIMERA_LOG_FORMAT, else auto)."""
    global _log_format
    if fmt is not None and fmt not in LOG_FORMATS:
        raise ValueError(f"log-format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    _log_format = fmt


def _renderer(stream: TextIO) -> Any:
    fmt = _log_format or os.environ.get(LOG_FORMAT_ENV, "") or "auto"
    if fmt not in LOG_FORMATS:
        fmt = "auto"  # a bad environment value must not stop a kill switch from logging
    tty = bool(getattr(stream, "isatty", lambda: False)())
    if fmt == "console" or (fmt == "auto" and tty):
        return structlog.dev.ConsoleRenderer(colors=tty)
    return structlog.processors.JSONRenderer()


def configure_logging(
    level: str = "INFO", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Set up structlog once; later calls only add secrets and change the level. JSON
    lines unless the format (``set_log_format`` / CHIMERA_LOG_FORMAT) says console or is
    auto on a terminal; secrets are redacted before either renderer sees the event."""
    redactor.add(secrets)
    out = stream or sys.stderr
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            _renderer(out),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(out),
        cache_logger_on_first_use=False,
    )
