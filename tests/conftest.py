"""Suite-wide fixtures."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import structlog


@pytest.fixture(autouse=True)
def _logging_does_not_outlive_its_test() -> Iterator[None]:
    """A test that configures logging (``configure_logging`` binds the stream it finds,
    pytest's per-test capture) leaves it bound to a stream pytest closes afterwards; the
    next test that logs without configuring would write to it ("I/O operation on closed
    file"). Each test starts from structlog's defaults instead."""
    yield
    structlog.reset_defaults()
