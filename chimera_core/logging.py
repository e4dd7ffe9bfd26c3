"""structlog JSON logging, configured once per process, with secret redaction.

Secrets are removed twice over: any key that names a secret has its value replaced,
and any registered secret value is scrubbed from every string in the event, wherever
it appears (a URL, an exception text, a header dump).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, MutableMapping
from typing import Any, TextIO

import structlog

REDACTED = "***"
_SECRET_KEYS = frozenset(
    {
        "api_key", "apikey", "x-api-key", "x_api_key", "password", "pin", "totp", "totp_secret",
        "jwt", "jwt_token", "jwttoken", "access_token", "refresh_token", "refreshtoken",
        "feed_token", "feedtoken", "x-feed-token", "x_feed_token", "authorization", "secret",
        "control_token",
    }
)  # fmt: skip


class SecretRedactor:
    """structlog processor: scrubs secret keys and registered secret values."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        # Longest first, so a secret that contains another is removed whole.
        self._secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def add(self, secrets: Iterable[str]) -> None:
        self._secrets = sorted(
            {*self._secrets, *(s for s in secrets if len(s) >= 4)}, key=len, reverse=True
        )

    def _scrub(self, value: Any) -> Any:
        if isinstance(value, str):
            for secret in self._secrets:
                if secret in value:
                    value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {
                k: REDACTED if str(k).lower() in _SECRET_KEYS else self._scrub(v)
                for k, v in value.items()
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
            if key.lower() in _SECRET_KEYS:
                event_dict[key] = REDACTED
            else:
                event_dict[key] = self._scrub(event_dict[key])
        return event_dict


redactor = SecretRedactor()


def configure_logging(
    level: str = "INFO", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Set up structlog JSON output once; later calls only add secrets and change the level."""
    redactor.add(secrets)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            redactor,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level)),
        logger_factory=structlog.PrintLoggerFactory(stream or sys.stderr),
        cache_logger_on_first_use=False,
    )
