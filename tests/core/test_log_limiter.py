"""RateLimiter: a flood of one warning becomes a bounded number of lines plus exact counts."""

from __future__ import annotations

import io
from collections import Counter

import orjson
import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from chimera_core.logging import RateLimiter, configure_logging


class FakeClock:
    """Injected time: the limiter must not read the wall clock itself."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_100k_repeated_events_give_bounded_lines_and_the_right_suppressed_count() -> None:
    out = io.StringIO()
    configure_logging("INFO", stream=out)
    log = structlog.get_logger("flood")
    clock = FakeClock()
    limiter = RateLimiter(log, burst=5, interval_s=1.0, clock=clock)
    for i in range(100_000):
        clock.now += 1e-4  # 10 s of frames at 10k/s
        if limiter.allow("frame_malformed"):
            log.warning("frame_malformed", size=7, i=i)
    limiter.flush(final=True)
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    passed = [x for x in lines if x["event"] == "frame_malformed"]
    summaries = [x for x in lines if x["event"] == "frame_malformed_suppressed"]
    # ~10 windows: 5 lines and one summary each, instead of 100k lines.
    assert 40 <= len(passed) <= 60 and 8 <= len(summaries) <= 12
    assert len(lines) == len(passed) + len(summaries)
    assert len(passed) + sum(s["suppressed"] for s in summaries) == 100_000
    assert limiter.suppressed_total == 100_000 - len(passed)
    assert all(s["level"] == "warning" and s["passed"] == 5 for s in summaries)
    assert len(out.getvalue()) < 20_000


def test_each_event_name_has_its_own_budget_and_a_quiet_window_resets_it() -> None:
    clock = FakeClock()
    with capture_logs() as logs:
        limiter = RateLimiter(structlog.get_logger("t"), burst=2, interval_s=10.0, clock=clock)
        assert [limiter.allow("a") for _ in range(4)] == [True, True, False, False]
        assert [limiter.allow("b") for _ in range(3)] == [True, True, False]
        assert logs == []  # nothing to summarise until a window ends
        clock.now += 10.0
        assert limiter.allow("a") is True
        assert logs == [
            {"event": "a_suppressed", "suppressed": 2, "passed": 2, "interval_s": 10.0,
             "log_level": "warning"}
        ]  # fmt: skip
        limiter.flush()  # b's window has ended too
        assert logs[-1]["event"] == "b_suppressed" and logs[-1]["suppressed"] == 1
        limiter.flush(final=True)  # a's new window suppressed nothing: no line
        assert len(logs) == 2


def test_bad_settings_are_refused() -> None:
    log = structlog.get_logger("t")
    with pytest.raises(ValueError, match="burst"):
        RateLimiter(log, burst=0)
    with pytest.raises(ValueError, match="interval_s"):
        RateLimiter(log, interval_s=0.0)


@settings(max_examples=150, deadline=None)
@given(
    steps=st.lists(st.tuples(st.sampled_from(["x", "y", "z"]), st.floats(0.0, 3.0)), max_size=300),
    burst=st.integers(1, 5),
    interval=st.floats(0.5, 5.0),
)
def test_every_event_is_either_passed_or_counted(
    steps: list[tuple[str, float]], burst: int, interval: float
) -> None:
    clock = FakeClock()
    passes: dict[str, list[float]] = {}
    with capture_logs() as logs:
        limiter = RateLimiter(
            structlog.get_logger("t"), burst=burst, interval_s=interval, clock=clock
        )
        for name, dt in steps:
            clock.now += dt
            earlier = passes.get(name, [])
            allowed = limiter.allow(name)
            if earlier and clock.now - earlier[-1] >= interval:
                assert allowed, "an event an interval after the last one shown must be shown"
            if allowed:
                passes.setdefault(name, []).append(clock.now)
        limiter.flush(final=True)
    suppressed: Counter[str] = Counter()
    for line in logs:
        assert line["event"].endswith("_suppressed") and line["suppressed"] > 0
        suppressed[line["event"].removesuffix("_suppressed")] += line["suppressed"]
    calls = Counter(name for name, _ in steps)
    for name, n in calls.items():
        assert len(passes.get(name, [])) + suppressed[name] == n
    # Windows of `interval` pass at most `burst` each, so no span shorter than one
    # interval can hold more than two windows' worth.
    for times in passes.values():
        for a, b in zip(times, times[2 * burst :], strict=False):
            assert b - a >= interval
