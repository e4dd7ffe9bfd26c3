"""Suite-wide fixtures."""

from __future__ import annotations

import gc
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


@pytest.fixture(autouse=True)
def _garbage_is_collected_in_the_test_that_made_it() -> Iterator[None]:
    """An object a test drops with resources still open (an event loop, a socket) warns
    when it is collected; collecting after each test pins that on the test that made it,
    not on whichever later test happens to trigger a collection."""
    yield
    gc.collect()
