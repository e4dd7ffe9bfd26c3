"""The rate limit (nothing lost: every held alert is in a summary's count) and the channel
filters (events, severity, quiet hours), each against a plain re-implementation."""

from __future__ import annotations

import datetime as dt

from hypothesis import given, settings
from hypothesis import strategies as st

from chimera_core.config import NotifyChannelConfig
from tools.notify.policy import RateLimit, channel_verdict, in_quiet_hours
from tools.notify.rules import Alert

S = 1_000_000_000


def _reference_counts(events: list[tuple[str, int]], limit: int, window_ns: int) -> dict[str, int]:
    """Passed per name: windows open at the first alert after the previous one closed."""
    passed: dict[str, int] = {}
    open_at: dict[str, tuple[int, int]] = {}  # name -> (window start, passed in it)
    for name, t in events:
        start, n = open_at.get(name, (None, 0))  # type: ignore[assignment]
        if start is None or t - start >= window_ns:
            start, n = t, 0
        if n < limit:
            n += 1
            passed[name] = passed.get(name, 0) + 1
        open_at[name] = (start, n)
    return passed


events = st.lists(
    st.tuples(st.sampled_from(["broker_reject", "fill", "feed_dark"]), st.integers(0, 50 * S)),
    max_size=200,
).map(lambda xs: sorted(xs, key=lambda e: e[1]))


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 6), st.integers(1, 20))
def test_rate_limit_loses_nothing_and_passes_what_the_reference_passes(evs, limit, window_s):
    rl = RateLimit(limit, float(window_s))
    out: list[Alert] = []
    for name, t in evs:
        out += rl.admit(Alert(name, "warning", f"{name} at {t}", t))
    end = (evs[-1][1] if evs else 0) + window_s * S
    out += rl.flush(end)
    summaries = [a for a in out if " more " in a.text]
    passed = [a for a in out if " more " not in a.text]
    held = sum(int(a.text.split()[0]) for a in summaries)
    assert len(passed) + held == len(evs)  # each alert is sent or counted in a summary
    ref = _reference_counts(evs, limit, window_s * S)
    got: dict[str, int] = {}
    for a in passed:
        got[a.name] = got.get(a.name, 0) + 1
    assert got == ref
    assert rl.flush(end + window_s * S) == []


def test_a_burst_of_rejects_is_summarised_with_its_count():
    rl = RateLimit(3, 60.0)
    sent = [
        a for i in range(40) for a in rl.admit(Alert("broker_reject", "warning", f"r{i}", i * S))
    ]
    assert [a.text for a in sent] == ["r0", "r1", "r2"]
    (summary,) = rl.flush(61 * S)
    assert summary.text.startswith("37 more broker_reject in the last 60 s (latest: r39)")


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


hhmm = st.builds(lambda h, m: f"{h:02d}:{m:02d}", st.integers(0, 23), st.integers(0, 59))


@given(hhmm, hhmm, st.integers(0, 24 * 60 - 1))
def test_quiet_hours_match_a_set_of_minutes(start, end, minute):
    a, b = _minutes(start), _minutes(end)
    quiet = (
        set(range(24 * 60))
        if a == b
        else {m % (24 * 60) for m in range(a, b if b > a else b + 24 * 60)}
    )
    when = dt.datetime(2026, 1, 5, minute // 60, minute % 60)
    assert in_quiet_hours(f"{start}-{end}", when) == (minute in quiet)
    assert not in_quiet_hours("", when)


def test_a_channel_filters_by_event_severity_and_quiet_hours_but_critical_passes():
    utc = dt.UTC
    night = int(dt.datetime(2026, 1, 5, 23, 30, tzinfo=utc).timestamp() * S)
    day = int(dt.datetime(2026, 1, 5, 12, 0, tzinfo=utc).timestamp() * S)
    ch = NotifyChannelConfig(events=["feed_dark", "fill"], min_severity="warning",
                             quiet_hours="22:00-07:00")  # fmt: skip
    assert channel_verdict(ch, Alert("fill", "info", "", day), utc) == (
        False,
        "filtered: below warning",
    )
    assert channel_verdict(ch, Alert("trading_state", "critical", "", day), utc)[1] == (
        "filtered: event"
    )
    assert channel_verdict(ch, Alert("feed_dark", "warning", "", night), utc) == (
        False,
        "quiet_hours",
    )
    assert channel_verdict(ch, Alert("feed_dark", "critical", "", night), utc) == (True, "")
    assert channel_verdict(ch, Alert("feed_dark", "warning", "", day), utc) == (True, "")
