"""Market calendars: hand-worked sessions, an independent wall-clock reference (hypothesis,
DST zones included), the full int64 range without an exception, and config errors."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from chimera_core.config import parse_config
from chimera_core.errors import ConfigError
from chimera_core.markets import (
    MAX_MS,
    MIN_MS,
    NEVER,
    NO_SESSION,
    PRESETS,
    MarketCalendar,
    MarketConfig,
    build_calendars,
    calendar_for_exchange_type,
)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
IST = ZoneInfo("Asia/Kolkata")
NY = ZoneInfo("America/New_York")
INT64 = st.integers(-(2**63), 2**63 - 1)


def ms(d: datetime) -> int:
    return int(d.timestamp() * 1000)


def ist(y: int, mo: int, d: int, h: int, mi: int, s: int = 0, milli: int = 0) -> int:
    return ms(datetime(y, mo, d, h, mi, s, tzinfo=IST)) + milli


def one(name: str, **keys: Any) -> MarketCalendar:
    return build_calendars({name: MarketConfig(**keys)})[name]


# ---- hand-worked: NSE cash around Christmas 2024 (Wed 25 Dec a holiday) ----------------
def test_nse_cash_session_by_hand() -> None:
    cal = one("NSE_CM", holidays=["2024-12-25"])
    # Thu 26 Dec 2024 09:15 IST = 03:45 UTC.
    assert cal.session_open_ms(ist(2024, 12, 26, 12, 0)) == ms(
        datetime(2024, 12, 26, 3, 45, tzinfo=UTC)
    )
    assert not cal.is_open(ist(2024, 12, 26, 9, 14, 59, 999))
    assert cal.is_open(ist(2024, 12, 26, 9, 15))
    assert cal.entries_allowed(ist(2024, 12, 26, 14, 59, 59, 999))
    assert not cal.entries_allowed(ist(2024, 12, 26, 15, 0))  # cut-off
    assert cal.is_open(ist(2024, 12, 26, 15, 0))
    assert not cal.past_square_off(ist(2024, 12, 26, 15, 14, 59, 999))
    assert cal.past_square_off(ist(2024, 12, 26, 15, 15))
    assert cal.is_open(ist(2024, 12, 26, 15, 29, 59, 999))
    assert not cal.is_open(ist(2024, 12, 26, 15, 30))
    # Overnight the day stays the 26th and square-off stays passed, until the next open.
    assert cal.session_day(ist(2024, 12, 27, 9, 0)) == 20241226
    assert cal.past_square_off(ist(2024, 12, 27, 9, 0))
    assert cal.session_day(ist(2024, 12, 27, 9, 15)) == 20241227
    assert not cal.past_square_off(ist(2024, 12, 27, 9, 15))
    # The holiday: Tue 24th's session is in force all of Wed 25th.
    assert not cal.is_open(ist(2024, 12, 25, 11, 0))
    assert cal.session_day(ist(2024, 12, 25, 11, 0)) == 20241224
    assert cal.next_session_open_ms(ist(2024, 12, 25, 11, 0)) == ist(2024, 12, 26, 9, 15)
    # Fri 27th after the close -> Mon 30th 09:15 IST = 03:45 UTC.
    assert cal.next_session_open_ms(ist(2024, 12, 27, 16, 0)) == ms(
        datetime(2024, 12, 30, 3, 45, tzinfo=UTC)
    )
    assert not cal.is_open(ist(2024, 12, 28, 11, 0))  # Saturday
    assert cal.square_off_ms(ist(2024, 12, 26, 10, 0)) == ist(2024, 12, 26, 15, 15)


def test_new_session_only_at_an_open() -> None:
    cal = build_calendars()["NSE_CM"]
    fri_close = ist(2024, 12, 27, 15, 29)
    assert not cal.is_new_session(fri_close, ist(2024, 12, 30, 9, 14, 59, 999))  # Monday pre-open
    assert cal.is_new_session(fri_close, ist(2024, 12, 30, 9, 15))
    assert not cal.is_new_session(ist(2024, 12, 30, 9, 15), ist(2024, 12, 30, 15, 29))
    assert not cal.is_new_session(ist(2024, 12, 30, 9, 15), fri_close)  # backwards
    assert not cal.is_new_session(2**63 - 1, ist(2024, 12, 30, 9, 15))  # bogus clock


def test_mcx_closes_later_in_the_us_winter() -> None:
    cal = build_calendars()["MCX_FO"]
    # 1 Jul 2024: New York on EDT -> MCX 09:00-23:30, square-off 23:00.
    s = cal.session(ist(2024, 7, 1, 12, 0))
    assert s is not None
    assert (s.open_ms, s.close_ms, s.square_off_ms, s.entry_cutoff_ms) == (
        ist(2024, 7, 1, 9, 0), ist(2024, 7, 1, 23, 30), ist(2024, 7, 1, 23, 0),
        ist(2024, 7, 1, 22, 45),
    )  # fmt: skip
    # 2 Dec 2024: New York on EST -> close 23:55, square-off 23:25, cut-off 23:10.
    s = cal.session(ist(2024, 12, 2, 12, 0))
    assert s is not None
    assert (s.close_ms, s.square_off_ms, s.entry_cutoff_ms) == (
        ist(2024, 12, 2, 23, 55), ist(2024, 12, 2, 23, 25), ist(2024, 12, 2, 23, 10),
    )  # fmt: skip
    assert cal.is_open(ist(2024, 12, 2, 23, 54)) and not cal.is_open(ist(2024, 7, 1, 23, 31))


def test_currency_hours() -> None:
    cal = calendar_for_exchange_type(build_calendars(), 13)
    assert cal.name == "CDE_FO"
    assert cal.is_open(ist(2024, 12, 26, 9, 0)) and not cal.is_open(ist(2024, 12, 26, 8, 59))
    assert cal.is_open(ist(2024, 12, 26, 16, 59)) and not cal.is_open(ist(2024, 12, 26, 17, 0))
    assert cal.past_square_off(ist(2024, 12, 26, 16, 30))


def test_generic_new_york_follows_dst() -> None:
    cal = one("US", timezone="America/New_York", open="09:30", close="16:00",
              weekdays=["Mon", "Tue", "Wed", "Thu", "Fri"])  # fmt: skip
    # July (EDT, -4): 13:30 UTC; January (EST, -5): 14:30 UTC.
    assert cal.session_open_ms(ms(datetime(2024, 7, 1, 15, tzinfo=UTC))) == ms(
        datetime(2024, 7, 1, 13, 30, tzinfo=UTC)
    )
    assert cal.session_open_ms(ms(datetime(2024, 1, 8, 15, tzinfo=UTC))) == ms(
        datetime(2024, 1, 8, 14, 30, tzinfo=UTC)
    )
    assert not cal.past_square_off(ms(datetime(2024, 1, 8, 20, 59, tzinfo=UTC)))  # none set
    assert cal.square_off_ms(ms(datetime(2024, 1, 8, 15, tzinfo=UTC))) == NEVER


def test_a_boundary_skipped_by_dst_opens_at_the_change() -> None:
    # Sun 10 Mar 2024, New York: 02:00 EST -> 03:00 EDT at 07:00 UTC; 02:30 never shows.
    cal = one("X", timezone="America/New_York", open="02:30", close="12:00")
    assert cal.session_open_ms(ms(datetime(2024, 3, 10, 12, tzinfo=UTC))) == ms(
        datetime(2024, 3, 10, 7, 0, tzinfo=UTC)
    )
    # Sun 3 Nov 2024: 01:30 shows twice; the first (EDT, 05:30 UTC) opens.
    cal = one("X", timezone="America/New_York", open="01:30", close="12:00")
    assert cal.session_open_ms(ms(datetime(2024, 11, 3, 12, tzinfo=UTC))) == ms(
        datetime(2024, 11, 3, 5, 30, tzinfo=UTC)
    )


def test_session_across_midnight_belongs_to_the_day_it_opened() -> None:
    cal = one("FX", timezone="UTC", open="22:00", close="21:00",
              weekdays=["Mon", "Tue", "Wed", "Thu", "Fri"])  # fmt: skip
    fri_2330 = ms(datetime(2024, 12, 27, 23, 30, tzinfo=UTC))
    assert cal.is_open(fri_2330) and cal.session_day(fri_2330) == 20241227
    sat_2030 = ms(datetime(2024, 12, 28, 20, 30, tzinfo=UTC))
    assert cal.is_open(sat_2030) and cal.session_day(sat_2030) == 20241227
    assert not cal.is_open(ms(datetime(2024, 12, 28, 21, 0, tzinfo=UTC)))
    assert cal.next_session_open_ms(sat_2030) == ms(datetime(2024, 12, 30, 22, tzinfo=UTC))


def test_24x7_generic_and_extra_days() -> None:
    cal = build_calendars()["generic"]
    t = ms(datetime(2024, 12, 28, 13, 0, tzinfo=UTC))  # a Saturday
    assert cal.is_open(t) and cal.entries_allowed(t) and not cal.past_square_off(t)
    assert cal.session_day(t) == 20241228
    assert cal.next_session_open_ms(t) == ms(datetime(2024, 12, 29, tzinfo=UTC))
    # A special Saturday session (budget day, 1 Feb 2025) on NSE.
    nse = one("NSE_CM", extra_days=["2025-02-01"])
    assert nse.is_open(ist(2025, 2, 1, 10, 0))
    assert not build_calendars()["NSE_CM"].is_open(ist(2025, 2, 1, 10, 0))


# ---- never raises; out of range is closed ---------------------------------------------
CALENDARS = [
    *build_calendars().values(),
    one("US", timezone="America/New_York", open="09:30", close="16:00"),
    one("FX", timezone="Pacific/Apia", open="17:00", close="16:00"),  # skipped a whole day
    one("NSE_CM", weekdays=["Sun"], holidays=[f"2024-{m:02d}-{d:02d}" for m, d in
                                              [(1, 7), (1, 14), (1, 21), (1, 28)]]),
]  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.sampled_from(range(len(CALENDARS))), INT64, INT64)
def test_every_int64_is_answered_without_an_exception(i: int, ts: int, prev: int) -> None:
    cal = CALENDARS[i]
    answers = (
        cal.is_open(ts), cal.entries_allowed(ts), cal.past_square_off(ts),
        cal.session_day(ts), cal.session_open_ms(ts), cal.next_session_open_ms(ts),
        cal.square_off_ms(ts), cal.is_new_session(prev, ts), cal.session(ts),
    )  # fmt: skip
    is_open, entries, _, day, open_ms, next_ms, sq, _, sess = answers
    for v in (day, open_ms, next_ms, sq):
        assert isinstance(v, int) and -(2**63) <= v <= 2**63 - 1
    assert not entries or is_open
    if is_open:
        assert open_ms <= ts < next_ms and sess is not None and sess.day == day
    if day == 0:
        assert not is_open and open_ms == NO_SESSION and sess is None


@pytest.mark.parametrize("ts", [-(2**63), MIN_MS - 1, MAX_MS, 10**17, 2**63 - 1])
def test_far_out_of_range_is_closed(ts: int) -> None:
    for cal in build_calendars().values():
        assert not cal.is_open(ts) and not cal.entries_allowed(ts)
        assert not cal.past_square_off(ts)  # a bogus clock must not square off either
        assert cal.session_day(ts) == 0 and cal.session(ts) is None
        assert cal.session_open_ms(ts) == NO_SESSION and cal.next_session_open_ms(ts) == NEVER
        assert cal.square_off_ms(ts) == NEVER
    # ...and the next in-range tick is answered normally again.
    assert build_calendars()["generic"].is_open(MIN_MS + 86_400_000)


# ---- an independent reference: naive wall-clock arithmetic -----------------------------
# Boundaries avoid 01:00-03:00 local, where DST changes make a wall time repeat or vanish
# (that case has its own test above); timestamps may fall anywhere.
ZONES = ["Asia/Kolkata", "America/New_York", "Europe/London", "UTC", "Australia/Sydney",
         "Asia/Tokyo"]  # fmt: skip
NAMES = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"]


def _hm(m: int) -> str:
    return f"{m // 60:02d}:{m % 60:02d}"


def _dst_window(m: int) -> bool:
    return 60 <= m % 1440 <= 180


class Reference:
    """The same rules, computed from local wall-clock datetimes and nothing else."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.tz = ZoneInfo(spec["timezone"])

    def local(self, ts: int) -> datetime:
        return (EPOCH + timedelta(milliseconds=ts)).astimezone(self.tz).replace(tzinfo=None)

    def to_ms(self, naive: datetime) -> int:
        return int(naive.replace(tzinfo=self.tz).timestamp() * 1000)

    def trading(self, d: date) -> bool:
        s = self.spec
        iso = d.isoformat()
        return (NAMES[d.weekday()] in s["weekdays"] and iso not in s["holidays"]) or (
            iso in s["extra_days"]
        )

    def late(self, d: date) -> timedelta:
        s = self.spec
        if s["late_close_tz"] == "none":
            return timedelta(0)
        z = ZoneInfo(s["late_close_tz"])
        off = datetime(d.year, d.month, d.day, 12, tzinfo=z).utcoffset()
        jan = datetime(d.year, 1, 15, 12, tzinfo=z).utcoffset()
        jul = datetime(d.year, 7, 15, 12, tzinfo=z).utcoffset()
        assert off is not None and jan is not None and jul is not None
        return timedelta(minutes=s["late_close_min"]) if off == min(jan, jul) else timedelta(0)

    def bounds(self, d: date) -> dict[str, datetime | None]:
        s = self.spec

        def at(text: str) -> datetime:
            hh, mm = map(int, text.split(":"))
            return datetime.combine(d, time(hh, mm))

        o = at(s["open"])
        c = at(s["close"])
        if c <= o:
            c += timedelta(days=1)

        def inside(key: str) -> datetime | None:
            if s[key] == "none":
                return None
            t = at(s[key])
            return t + timedelta(days=1) if t <= o else t  # the open's time = the end

        late = self.late(d)
        cut = inside("entry_cutoff")
        sq = inside("square_off")
        return {
            "open": o,
            "close": c + late,
            "cutoff": (c if cut is None else cut) + late,
            "sq": None if sq is None else sq + late,
        }

    def in_force(self, ts: int) -> tuple[date, dict[str, datetime | None]] | None:
        lt = self.local(ts)
        for back in range(400):
            d = lt.date() - timedelta(days=back)
            if self.trading(d):
                b = self.bounds(d)
                o = b["open"]
                assert o is not None
                if o <= lt:
                    return d, b
        return None

    def next_open(self, ts: int) -> int:
        lt = self.local(ts)
        for fwd in range(400):
            d = lt.date() + timedelta(days=fwd)
            if self.trading(d):
                o = self.bounds(d)["open"]
                assert o is not None
                if o > lt:
                    return self.to_ms(o)
        return NEVER


@st.composite
def market_specs(draw: st.DrawFn) -> dict[str, Any]:
    tz = draw(st.sampled_from(ZONES))
    minute = st.integers(0, 1439).filter(lambda m: not _dst_window(m))
    open_m = draw(minute)
    length = draw(st.one_of(st.just(1440), st.integers(1, 1439)))
    close_m = (open_m + length) % 1440
    assume(not _dst_window(close_m))
    late_tz, late_min = "none", 0
    if draw(st.booleans()):
        late_tz = "America/New_York"
        late_min = draw(st.integers(0, max(0, min(120, 1440 - length))))

    def inside() -> str:
        if draw(st.booleans()):
            return "none"
        m = (open_m + draw(st.integers(1, length))) % 1440
        assume(not _dst_window(m) and not _dst_window(m + late_min))
        return _hm(m)

    cutoff, sq = inside(), inside()
    assume(not _dst_window(close_m + late_min))
    weekdays = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=7, unique=True))
    days = st.dates(date(2019, 1, 1), date(2031, 12, 31)).map(date.isoformat)
    return {
        "timezone": tz, "open": _hm(open_m), "close": _hm(close_m), "entry_cutoff": cutoff,
        "square_off": sq, "weekdays": weekdays,
        "holidays": draw(st.lists(days, max_size=12)),
        "extra_days": draw(st.lists(days, max_size=4)),
        "late_close_tz": late_tz, "late_close_min": late_min,
    }  # fmt: skip


@st.composite
def timestamps(draw: st.DrawFn, spec: dict[str, Any]) -> int:
    if draw(st.booleans()):
        lo = ms(datetime(2019, 6, 1, tzinfo=UTC))
        return draw(st.integers(lo, ms(datetime(2031, 6, 1, tzinfo=UTC))))
    # Near a boundary: a local time of the market on some date, +- a little.
    d = draw(st.dates(date(2019, 6, 1), date(2031, 6, 1)))
    text = draw(st.sampled_from([v for k, v in spec.items()
                                 if k in ("open", "close", "entry_cutoff", "square_off")
                                 and v != "none"]))  # fmt: skip
    hh, mm = map(int, text.split(":"))
    base = datetime(d.year, d.month, d.day, hh, mm, tzinfo=ZoneInfo(spec["timezone"]))
    base += timedelta(minutes=draw(st.sampled_from([0, 0, spec["late_close_min"]])))
    return ms(base) + draw(st.sampled_from([-1, 0, 1, -60_000, 60_000]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(st.data())
def test_matches_the_wall_clock_reference(data: st.DataObject) -> None:
    spec = data.draw(market_specs())
    cal = one("M", **spec)
    ref = Reference(spec)
    for _ in range(4):
        ts = data.draw(timestamps(spec))
        got = ref.in_force(ts)
        assert got is not None
        d, b = got
        lt = ref.local(ts)
        close, cutoff, sq, open_ = b["close"], b["cutoff"], b["sq"], b["open"]
        assert close is not None and cutoff is not None and open_ is not None
        assert cal.session_day(ts) == d.year * 10_000 + d.month * 100 + d.day, (ts, lt)
        assert cal.session_open_ms(ts) == ref.to_ms(open_), (ts, lt)
        assert cal.is_open(ts) == (lt < close), (ts, lt, b)
        assert cal.entries_allowed(ts) == (lt < cutoff), (ts, lt, b)
        assert cal.past_square_off(ts) == (sq is not None and lt >= sq), (ts, lt, b)
        assert cal.next_session_open_ms(ts) == ref.next_open(ts), (ts, lt)
        prev = ts - data.draw(st.integers(1, 5 * 86_400_000))
        prev_got = ref.in_force(prev)
        assert prev_got is not None
        assert cal.is_new_session(prev, ts) == (prev_got[0] < d), (prev, ts)


# ---- config ----------------------------------------------------------------------------
def test_presets_cover_every_segment() -> None:
    assert set(PRESETS) == {"NSE_CM", "BSE_CM", "NSE_FO", "BSE_FO", "MCX_FO", "NCX_FO",
                            "CDE_FO", "generic"}  # fmt: skip
    for et in (1, 2, 3, 4, 5, 7, 13):
        calendar_for_exchange_type(build_calendars(), et)
    with pytest.raises(ConfigError, match="exchange type 6"):
        calendar_for_exchange_type(build_calendars(), 6)


def test_config_keys_parse_and_override_only_what_they_name() -> None:
    cfg = parse_config(
        '[markets.MCX_FO]\nholidays = ["2024-12-25"]\n'
        '[markets.US]\ntimezone = "America/New_York"\nopen = "09:30"\nclose = "16:00"\n'
    )
    cals = build_calendars(cfg.markets)
    assert cals["MCX_FO"].is_open(ist(2024, 12, 26, 23, 50))  # preset hours kept
    assert not cals["MCX_FO"].is_open(ist(2024, 12, 25, 12, 0))
    assert cals["US"].timezone == "America/New_York"


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        ('[markets.NSE_CM]\ntimezone = "Asia/Kolkatta"\n', ["Asia/Kolkatta", "IANA"]),
        ('[markets.NSE_CM]\nholidays = ["2025-02-30"]\n', ["2025-02-30", "YYYY-MM-DD"]),
        ('[markets.NSE_CM]\nopen = "9:15"\n', ["markets"]),
        ('[markets.NSE_CM]\nweekdays = ["Monday"]\n', ["Mon"]),
        ("[markets.NSE_CM]\nlate_close_min = -1\n", [">= 0"]),
    ],
)
def test_bad_market_values_are_refused_at_load(text: str, fragments: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text, "chimera.toml")
    for f in fragments:
        assert f in str(err.value)


@pytest.mark.parametrize(
    ("keys", "fragment"),
    [
        ({"entry_cutoff": "16:00"}, "'markets.NSE_CM.entry_cutoff'"),
        ({"square_off": "09:00"}, "'markets.NSE_CM.square_off'"),
        ({"square_off": "09:15"}, "'markets.NSE_CM.square_off'"),  # at the open: never open
        ({"close": "09:15", "late_close_tz": "UTC", "late_close_min": 30},
         "'markets.NSE_CM.late_close_min'"),
    ],
)  # fmt: skip
def test_cross_field_errors_name_the_key(keys: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError) as err:
        build_calendars({"NSE_CM": MarketConfig(**keys)})
    assert fragment in str(err.value)


def test_bad_market_name_is_refused() -> None:
    with pytest.raises(ConfigError, match="market name"):
        build_calendars({"nse cash": MarketConfig()})
