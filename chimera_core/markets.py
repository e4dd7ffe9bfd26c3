"""Market calendars: when a segment trades, takes entries and squares off, in its own timezone.

One calendar per market (an Angel One segment such as ``NSE_CM``, or any market named in
``[markets.NAME]`` for non-Indian data). Everything is a pure function of an exchange
timestamp in epoch milliseconds (UTC) and never raises for any int64:

    cal = build_calendars(cfg.markets)["NSE_CM"]     # or calendar_for_exchange_type(cals, 1)
    cal.is_open(ts)               # open <= ts < close of a session
    cal.entries_allowed(ts)       # open and before the entry cut-off
    cal.past_square_off(ts)       # at/after the square-off of the session in force
    cal.session_day(ts)           # YYYYMMDD of the session in force (see below), 0 if none
    cal.session_open_ms(ts)       # open of the session in force, NO_SESSION if none
    cal.next_session_open_ms(ts)  # first open strictly after ts, NEVER if none
    cal.square_off_ms(ts)         # square-off instant of the session in force, NEVER if none
    cal.is_new_session(prev, ts)  # a session opened in (prev, ts]
    cal.session(ts)               # all of it as a ``Session`` (or None), for records/logs

"The session in force" at ts is the latest session that opened at or before ts — the one
trading now, or after its close the one that last traded. So ``session_day`` changes only
at a session open (never at midnight), which is what a daily-loss rule that "clears at the
next session open" needs, also for sessions that cross midnight. Overnight, after 15:30,
``past_square_off`` stays True until the next open.

Timestamps outside 1900-01-02 .. 2199-12-31 (UTC) answer "closed": not open, no entries, no
square-off triggered (a bogus clock must not trade either way), ``session_day`` 0,
``session_open_ms`` NO_SESSION, ``next_session_open_ms`` NEVER; ``is_new_session`` is False
if either side is out of range or the day did not move forward.

Wall-clock rule: a boundary "HH:MM" on date D is the first instant the market's clock shows
D HH:MM or later. A time skipped by a DST change maps to the change itself; a repeated time
to its first occurrence. ``close == open`` is a 24-hour session; ``close < open`` a session
that crosses midnight (it belongs to the day it opened). Holidays remove a day, ``extra_days``
add one (a special weekend session, normal hours); Muhurat-style short sessions are not
modelled.

Speed: a calendar caches the window between the session in force's open and the next open;
inside it (the common case, every tick of a session) each call is two or three integer
comparisons on slots. Crossing a window looks up per-year session tables (built once per
year, on first use). Measured on this machine (timeit, 1M calls, ts inside the window):
about 0.1 µs per ``is_open`` / ``entries_allowed`` / ``past_square_off`` call.

Presets (used for every key a ``[markets.NAME]`` table leaves out; NAME that is not a
segment starts from ``generic``). Exchange hours are NSE/BSE/MCX/NCDEX's published normal
sessions; square-off and entry cut-off are ours, set ahead of the broker's auto square-off
so our exits are ours, not the broker's (Angel One does not publish one fixed time; brokers'
published auto square-off for equity and F&O ranges 15:15-15:25, currency 16:30-16:45,
commodities 25-30 min before the close — Geojit, Zerodha, Dhan, IIFL support pages):

- NSE_CM, BSE_CM, NSE_FO, BSE_FO: 09:15-15:30 IST, entries until 15:00, square-off 15:15.
- CDE_FO (currency): 09:00-17:00 IST, entries until 16:15, square-off 16:30.
- MCX_FO (commodity, non-agri evening session): 09:00-23:30 IST, entries until 22:45,
  square-off 23:00; on days New York keeps standard time (US winter, roughly Nov-Mar) MCX
  closes at 23:55 instead, so close, cut-off and square-off move 25 minutes later
  (``late_close_tz`` / ``late_close_min``). Agri contracts close at 17:00 or 21:00 on MCX:
  give them their own market if you trade them.
- NCX_FO (NCDEX agri): 09:00-17:00 IST, entries until 16:15, square-off 16:30.
- generic: UTC, 24 hours (00:00-00:00), every day, no cut-off, no square-off.

Holidays ship empty: list the exchange's trading holidays (NSE/MCX circulars) per market.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import msgspec

from chimera_core.contracts import ExchangeType
from chimera_core.errors import ConfigError

__all__ = [
    "MAX_MS",
    "MIN_MS",
    "NEVER",
    "NO_SESSION",
    "PRESETS",
    "MarketCalendar",
    "MarketConfig",
    "Session",
    "build_calendars",
    "calendar_for_exchange_type",
    "market_of_exchange_type",
    "merged_market",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MIN_YEAR, _MAX_YEAR = 1900, 2199
# In range: local dates stay inside the supported years for any UTC offset (< 1 day).
MIN_MS = (datetime(_MIN_YEAR, 1, 2, tzinfo=UTC) - _EPOCH) // _MS
MAX_MS = (datetime(_MAX_YEAR, 12, 31, tzinfo=UTC) - _EPOCH) // _MS
NEVER = 2**63 - 1  # "no such instant" for next opens / square-offs (fits an int64 column)
NO_SESSION = -(2**63)  # session_open_ms when no session is in force
# Beyond any int64: comparisons against these are always False / True.
_BELOW = -(2**64)
_ABOVE = 2**64

_CLOCK_RE = r"([01][0-9]|2[0-3]):[0-5][0-9]"
Clock = Annotated[str, msgspec.Meta(pattern=f"^{_CLOCK_RE}$")]
ClockOrNone = Annotated[str, msgspec.Meta(pattern=f"^({_CLOCK_RE}|none)$")]
DateText = Annotated[str, msgspec.Meta(pattern=r"^\d{4}-\d{2}-\d{2}$")]
Weekday = Literal["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]
WEEKDAYS: tuple[Weekday, ...] = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")


class MarketConfig(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """``[markets.NAME]``: one market's calendar. A key left out takes NAME's preset (see
    the module docstring); TOML has no null, so leaving a key out is how to inherit it."""

    timezone: str | None = None  # IANA name: "Asia/Kolkata", "America/New_York", "UTC"
    open: Clock | None = None  # "HH:MM" local
    close: Clock | None = None  # == open: 24 h; < open: crosses midnight
    entry_cutoff: ClockOrNone | None = None  # no new entries from here; "none" = the close
    square_off: ClockOrNone | None = None  # intraday positions closed; "none" = never
    weekdays: Annotated[list[Weekday], msgspec.Meta(min_length=1, max_length=7)] | None = None
    holidays: Annotated[list[DateText], msgspec.Meta(max_length=10_000)] | None = None
    extra_days: Annotated[list[DateText], msgspec.Meta(max_length=10_000)] | None = None
    # On days this timezone keeps standard time (not DST), close, cut-off and square-off
    # move late_close_min later (MCX: 23:30 -> 23:55 in the US winter). "none" = never.
    late_close_tz: str | None = None
    late_close_min: Annotated[int, msgspec.Meta(ge=0, le=720)] | None = None
    # Charges on this market's fills (chimera_execution/charges.py): "schedule" = the dated
    # Indian schedule (brokerage, STT/CTT, exchange, SEBI, GST, stamp) for the segment;
    # "percent" = charges_pct percent of each fill's turnover; "fixed" = charges_fixed per
    # executed order; "none". Presets: "schedule" for the Indian segments, "none" generic.
    charges: Literal["schedule", "percent", "fixed", "none"] | None = None
    charges_pct: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    charges_fixed: Annotated[float, msgspec.Meta(ge=0, le=1_000_000)] | None = None

    def __post_init__(self) -> None:
        # Field-level checks here (msgspec reports them at load); the cross-field ones need
        # the preset merged in and live in build_calendars.
        for tz in (self.timezone, self.late_close_tz):
            if tz is not None and tz != "none":
                _zone(tz)
        for d in (*(self.holidays or ()), *(self.extra_days or ())):
            _parse_date(d)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"markets: unknown timezone {name!r} (an IANA name such as 'Asia/Kolkata', "
            "'America/New_York', 'UTC')"
        ) from None


def _parse_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise ValueError(f"markets: {text!r} is not a real date (YYYY-MM-DD)") from None


_INDIA = "Asia/Kolkata"
_MON_FRI: list[Weekday] = ["Mon", "Tue", "Wed", "Thu", "Fri"]
_EQUITY = MarketConfig(
    timezone=_INDIA, open="09:15", close="15:30", entry_cutoff="15:00", square_off="15:15",
    weekdays=_MON_FRI, holidays=[], extra_days=[], late_close_tz="none", late_close_min=0,
    charges="schedule", charges_pct=0.0, charges_fixed=0.0,
)  # fmt: skip
PRESETS: dict[str, MarketConfig] = {
    "NSE_CM": _EQUITY,
    "BSE_CM": _EQUITY,
    "NSE_FO": _EQUITY,
    "BSE_FO": _EQUITY,
    "CDE_FO": msgspec.structs.replace(
        _EQUITY, open="09:00", close="17:00", entry_cutoff="16:15", square_off="16:30"
    ),
    "MCX_FO": msgspec.structs.replace(
        _EQUITY,
        open="09:00",
        close="23:30",
        entry_cutoff="22:45",
        square_off="23:00",
        late_close_tz="America/New_York",
        late_close_min=25,
    ),
    "NCX_FO": msgspec.structs.replace(
        _EQUITY, open="09:00", close="17:00", entry_cutoff="16:15", square_off="16:30"
    ),
    "generic": MarketConfig(
        timezone="UTC",
        open="00:00",
        close="00:00",
        entry_cutoff="none",
        square_off="none",
        weekdays=list(WEEKDAYS),
        holidays=[],
        extra_days=[],
        late_close_tz="none",
        late_close_min=0,
        charges="none",
        charges_pct=0.0,
        charges_fixed=0.0,
    ),
}


class Session(msgspec.Struct, frozen=True):
    """One session, instants in epoch ms (UTC). ``square_off_ms`` is NEVER without one."""

    day: int  # YYYYMMDD, the local date the session opened
    open_ms: int
    entry_cutoff_ms: int
    square_off_ms: int
    close_ms: int
    next_open_ms: int  # NEVER if none in range


def _minutes(hhmm: str) -> int:
    return int(hhmm[:2]) * 60 + int(hhmm[3:])


def _to_ms(aware: datetime) -> int:
    return (aware - _EPOCH) // _MS


def _wall(tz: ZoneInfo, ms: int) -> datetime:
    return (_EPOCH + timedelta(milliseconds=ms)).astimezone(tz).replace(tzinfo=None)


def _instant_ms(tz: ZoneInfo, d: date, minutes: int) -> int:
    """The first instant the clock in ``tz`` shows (d + minutes) or later."""
    day = d + timedelta(days=minutes // 1440)
    m = minutes % 1440
    naive = datetime(day.year, day.month, day.day, m // 60, m % 60)
    ms = _to_ms(naive.replace(tzinfo=tz))
    if _wall(tz, ms) == naive:
        return ms
    # ``naive`` was skipped (DST forward): fold=1 lands before the change, fold=0 after
    # it; the change itself is the first instant showing ``naive`` or later.
    lo, hi = _to_ms(naive.replace(tzinfo=tz, fold=1)), ms
    if not (lo < hi and _wall(tz, lo) < naive):
        return ms
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _wall(tz, mid) >= naive:
            hi = mid
        else:
            lo = mid
    return hi


class _Spec(msgspec.Struct, frozen=True):
    """A market's calendar rules, merged and checked, in minutes after local midnight of
    the session's date (>= 1440: the next day)."""

    tz: str
    open_min: int
    close_min: int
    cutoff_min: int
    square_off_min: int | None
    weekdays: frozenset[int]
    holidays: frozenset[date]
    extra_days: frozenset[date]
    late_tz: str | None
    late_min: int


def merged_market(name: str, override: MarketConfig | None = None) -> MarketConfig:
    """``override``'s keys over NAME's preset (``generic`` for a NAME that is not a
    segment): a MarketConfig with no None left."""
    base = PRESETS.get(name, PRESETS["generic"])
    if override is None:
        return base
    changes = {
        f: getattr(override, f)
        for f in MarketConfig.__struct_fields__
        if getattr(override, f) is not None
    }
    return msgspec.structs.replace(base, **changes)


def _merge(name: str, override: MarketConfig | None) -> _Spec:
    got: dict[str, Any] = msgspec.structs.asdict(merged_market(name, override))
    key = f"markets.{name}"
    if not _NAME_RE.match(name):
        raise ConfigError(
            f"'{key}': a market name is a letter then up to 31 letters, digits or _ "
            f"(an Angel One segment such as NSE_CM, or your own name such as US)"
        )
    tz = str(got["timezone"])
    late_tz = str(got["late_close_tz"])
    for field, zone in (("timezone", tz), ("late_close_tz", late_tz)):
        if field == "late_close_tz" and zone == "none":
            continue
        try:
            _zone(zone)
        except ValueError as exc:
            raise ConfigError(f"'{key}.{field}': {exc}") from None
    open_min = _minutes(str(got["open"]))
    close_min = _minutes(str(got["close"]))
    if close_min <= open_min:
        close_min += 1440  # 24 h (equal) or across midnight
    length = close_min - open_min

    def within(field: str) -> int | None:
        text = str(got[field])
        if text == "none":
            return None
        m = _minutes(text)
        if m <= open_min:
            m += 1440  # the open's own time is the end of a 24-hour session
        if not open_min < m <= close_min:
            raise ConfigError(
                f"'{key}.{field}' = {text!r} is outside the session {got['open']}-"
                f"{got['close']} (allowed: after the open, at or before the close, or 'none')"
            )
        return m

    cutoff = within("entry_cutoff")
    square_off = within("square_off")
    late_min = int(got["late_close_min"])
    if late_tz == "none":
        late_min = 0
    if length + late_min > 1440:
        raise ConfigError(
            f"'{key}.late_close_min' = {late_min}: the session would run into the next "
            f"day's open (session is {length} min; allowed: at most {1440 - length})"
        )
    weekdays = frozenset(WEEKDAYS.index(w) for w in got["weekdays"])
    holidays = frozenset(_parse_date(d) for d in got["holidays"])
    extra = frozenset(_parse_date(d) for d in got["extra_days"])
    return _Spec(
        tz=tz,
        open_min=open_min,
        close_min=close_min,
        cutoff_min=close_min if cutoff is None else cutoff,
        square_off_min=square_off,
        weekdays=weekdays,
        holidays=holidays,
        extra_days=extra,
        late_tz=None if late_tz == "none" or late_min == 0 else late_tz,
        late_min=late_min,
    )


# A year's sessions: (opens, sessions as tuples (day, open, cutoff, square_off, close)).
_Year = tuple[list[int], list[tuple[int, int, int, int, int]]]


class MarketCalendar:
    """A market's sessions as pure functions of an exchange timestamp (ms). See module doc."""

    __slots__ = (
        "_close",
        "_cutoff",
        "_day",
        "_hi",
        "_late_tz",
        "_lo",
        "_next",
        "_open",
        "_spec",
        "_sq",
        "_tz",
        "_years",
        "name",
        "timezone",
    )

    def __init__(self, name: str, spec: _Spec) -> None:
        self.name = name
        self.timezone = spec.tz
        self._spec = spec
        self._tz = ZoneInfo(spec.tz)
        self._late_tz = ZoneInfo(spec.late_tz) if spec.late_tz else None
        self._years: dict[int, _Year] = {}
        # The cached window [lo, hi): from the open of the session in force to the next open.
        self._lo = 0
        self._hi = 0
        self._open = NO_SESSION
        self._close = _BELOW
        self._cutoff = _BELOW
        self._sq = _ABOVE
        self._day = 0
        self._next = NEVER

    def __repr__(self) -> str:
        s = self._spec
        return f"MarketCalendar({self.name!r}, {s.tz}, open={s.open_min}m, close={s.close_min}m)"

    # ---- hot path: a window check, then one comparison --------------------------------
    def is_open(self, ts_ms: int) -> bool:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return ts_ms < self._close

    def entries_allowed(self, ts_ms: int) -> bool:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return ts_ms < self._cutoff

    def past_square_off(self, ts_ms: int) -> bool:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return ts_ms >= self._sq

    def session_day(self, ts_ms: int) -> int:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return self._day

    def session_open_ms(self, ts_ms: int) -> int:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return self._open

    def next_session_open_ms(self, ts_ms: int) -> int:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return self._next

    def square_off_ms(self, ts_ms: int) -> int:
        if not self._lo <= ts_ms < self._hi:
            self._locate(ts_ms)
        return self._sq if self._sq < _ABOVE else NEVER

    def is_new_session(self, prev_ts_ms: int, ts_ms: int) -> bool:
        """True when a session opened after ``prev_ts_ms`` and at or before ``ts_ms``."""
        before = self.session_day(prev_ts_ms)
        after = self.session_day(ts_ms)
        return before != 0 and after > before

    def session(self, ts_ms: int) -> Session | None:
        """The session in force at ``ts_ms`` (None before the first one / out of range)."""
        day = self.session_day(ts_ms)
        if day == 0:
            return None
        return Session(
            day=day,
            open_ms=self._open,
            entry_cutoff_ms=self._cutoff,
            square_off_ms=self._sq if self._sq < _ABOVE else NEVER,
            close_ms=self._close,
            next_open_ms=self._next,
        )

    # ---- slow path: once per session (or per out-of-order jump) ------------------------
    def _locate(self, ts_ms: int) -> None:
        try:
            ts = int(ts_ms)
        except (TypeError, ValueError, OverflowError):
            ts = _ABOVE  # NaN / inf / junk: out of range, closed
        if not MIN_MS <= ts < MAX_MS:
            self._set_closed(_BELOW if ts < MIN_MS else MAX_MS, MIN_MS if ts < MIN_MS else _ABOVE)
            return
        year = (_EPOCH + timedelta(milliseconds=ts)).astimezone(self._tz).year
        prev = None
        for y in range(year, _MIN_YEAR - 1, -1):
            opens, sessions = self._year(y)
            i = bisect.bisect_right(opens, ts)
            if i:
                prev = sessions[i - 1]
                break
        nxt = NEVER
        for y in range(year, _MAX_YEAR + 1):
            opens, _ = self._year(y)
            i = bisect.bisect_right(opens, ts)
            if i < len(opens):
                nxt = opens[i]
                break
        hi = MAX_MS if nxt == NEVER else nxt
        if prev is None:
            self._set_closed(MIN_MS, hi)
            self._next = nxt
            return
        self._day, self._open, self._cutoff, sq, self._close = prev
        self._sq = _ABOVE if sq == NEVER else sq
        self._lo, self._hi, self._next = prev[1], hi, nxt

    def _set_closed(self, lo: int, hi: int) -> None:
        self._lo, self._hi = lo, hi
        self._open, self._close, self._cutoff, self._sq = NO_SESSION, _BELOW, _BELOW, _ABOVE
        self._day, self._next = 0, NEVER

    def _year(self, year: int) -> _Year:
        cached = self._years.get(year)
        if cached is not None:
            return cached
        s, tz = self._spec, self._tz
        opens: list[int] = []
        sessions: list[tuple[int, int, int, int, int]] = []
        d = date(year, 1, 1)
        one = timedelta(days=1)
        while d.year == year:
            trading = (d.weekday() in s.weekdays and d not in s.holidays) or d in s.extra_days
            if trading:
                late = s.late_min if self._late_is_standard(d) else 0
                open_ms = _instant_ms(tz, d, s.open_min)
                close_ms = _instant_ms(tz, d, s.close_min + late)
                cutoff_ms = _instant_ms(tz, d, s.cutoff_min + late)
                sq = s.square_off_min
                sq_ms = NEVER if sq is None else _instant_ms(tz, d, sq + late)
                day = d.year * 10_000 + d.month * 100 + d.day
                opens.append(open_ms)
                sessions.append((day, open_ms, cutoff_ms, sq_ms, close_ms))
            d += one
        self._years[year] = (opens, sessions)
        return opens, sessions

    def _late_is_standard(self, d: date) -> bool:
        if self._late_tz is None:
            return False
        noon = datetime(d.year, d.month, d.day, 12, tzinfo=self._late_tz)
        return noon.dst() == timedelta(0)


def build_calendars(markets: Mapping[str, MarketConfig] | None = None) -> dict[str, MarketCalendar]:
    """Every preset market plus every ``[markets.NAME]``, each key merged over its preset.

    Raises ConfigError naming ``markets.NAME.key`` for a cut-off or square-off outside the
    session, a bad timezone or market name, or a late close that runs into the next open.
    Call it once at start-up (it is cheap: sessions are built lazily, per year)."""
    markets = markets or {}
    names = [*PRESETS, *(n for n in markets if n not in PRESETS)]
    return {n: MarketCalendar(n, _merge(n, markets.get(n))) for n in names}


def market_of_exchange_type(exchange_type: int) -> str:
    """SmartAPI exchange type (1, 2, 3, 4, 5, 7, 13) -> its market name ("NSE_CM", ...)."""
    try:
        return ExchangeType(exchange_type).name
    except ValueError:
        raise ConfigError(
            f"unknown exchange type {exchange_type!r} (allowed: "
            + ", ".join(f"{e.value}={e.name}" for e in ExchangeType)
            + ")"
        ) from None


def calendar_for_exchange_type(
    calendars: Mapping[str, MarketCalendar], exchange_type: int
) -> MarketCalendar:
    """The calendar of a SmartAPI segment, e.g. ``calendar_for_exchange_type(cals, 2)``."""
    return calendars[market_of_exchange_type(exchange_type)]


def calendar_for(
    markets: Mapping[str, MarketConfig], exchange_type: int, square_off: str = ""
) -> MarketCalendar:
    """The calendar the engine, meta-risk and the router share for one segment, with
    ``square_off`` ("HH:MM", from ``execution.square_off_at``) over the market's own when
    given. Raises ConfigError as ``build_calendars`` does."""
    name = market_of_exchange_type(exchange_type)
    override = markets.get(name)
    if square_off:
        override = msgspec.structs.replace(override or MarketConfig(), square_off=square_off)
    return MarketCalendar(name, _merge(name, override))
