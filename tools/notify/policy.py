"""Who gets an alert, and how many of one kind: the per-name rate limit (with a summary of
what it held back), and each channel's filter by event, severity and quiet hours."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from chimera_core.config import NotifyChannelConfig
from tools.notify.rules import SEVERITIES, Alert

_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass
class _Window:
    started_ns: int
    passed: int = 0
    held: int = 0
    worst: str = "info"
    last_text: str = ""


@dataclass
class RateLimit:
    """At most ``limit`` alerts of one name per ``window_s``; the rest are counted and, when
    the window is over, told in one summary ("37 more broker_reject in the last 60 s").
    Nothing is lost: a held alert is in its summary's count."""

    limit: int
    window_s: float
    _windows: dict[str, _Window] = field(default_factory=dict)

    def admit(self, alert: Alert) -> list[Alert]:
        """What to send now: the alert itself, or nothing while its name is over the limit
        (counted); a window that has ended gives its summary first."""
        out: list[Alert] = []
        w = self._windows.get(alert.name)
        if w is not None and alert.raised_ns - w.started_ns >= self.window_s * 1e9:
            out.extend(self._summary(alert.name, w, alert.raised_ns))
            w = None
        if w is None:
            w = self._windows[alert.name] = _Window(alert.raised_ns)
        if w.passed < self.limit:
            w.passed += 1
            out.append(alert)
            return out
        w.held += 1
        if _RANK[alert.severity] > _RANK[w.worst]:
            w.worst = alert.severity
        w.last_text = alert.text
        return out

    def _summary(self, name: str, w: _Window, now_ns: int) -> list[Alert]:
        del self._windows[name]
        if not w.held:
            return []
        return [
            Alert(
                name,
                w.worst,
                f"{w.held} more {name} in the last {self.window_s:.0f} s (latest: {w.last_text})",
                now_ns,
            )
        ]

    def flush(self, now_ns: int) -> list[Alert]:
        """Summaries of the windows that are over and held something back."""
        out = []
        for name, w in list(self._windows.items()):
            if now_ns - w.started_ns >= self.window_s * 1e9:
                out.extend(self._summary(name, w, now_ns))
        return out

    def held(self, name: str) -> int:
        w = self._windows.get(name)
        return 0 if w is None else w.held


def _minutes(hhmm: str) -> int:
    h, m = hhmm.split(":")
    return int(h) * 60 + int(m)


def in_quiet_hours(quiet: str, when: dt.datetime) -> bool:
    """``quiet`` is "HH:MM-HH:MM" (an end before the start wraps past midnight), "" none."""
    if not quiet:
        return False
    start, end = (_minutes(x) for x in quiet.split("-"))
    now = when.hour * 60 + when.minute
    if start == end:
        return True  # the whole day
    if start < end:
        return start <= now < end
    return now >= start or now < end


def channel_verdict(channel: NotifyChannelConfig, alert: Alert, tz: dt.tzinfo) -> tuple[bool, str]:
    """(deliver, why not): the channel's event list, its minimum severity, then quiet
    hours, which hold back everything except critical alerts."""
    if "*" not in channel.events and alert.name not in channel.events:
        return False, "filtered: event"
    if _RANK[alert.severity] < _RANK[channel.min_severity]:
        return False, f"filtered: below {channel.min_severity}"
    if alert.severity != "critical":
        when = dt.datetime.fromtimestamp(alert.raised_ns / 1e9, tz)
        if in_quiet_hours(channel.quiet_hours, when):
            return False, "quiet_hours"
    return True, ""
