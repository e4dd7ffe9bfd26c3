"""A module's structlog logger, imported on first use.

For modules on the path of a fresh process that must answer fast (``chimera kill``: the
control client, the config it loads): structlog with its rich and asyncio imports would
more than double that process's start-up before HALT is sent.
"""

from __future__ import annotations

from typing import Any


class LazyLogger:
    """``log = LazyLogger(__name__)``; ``log.info(...)`` imports structlog the first time."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Any:
        import structlog

        return getattr(structlog.get_logger(self._name), method)
