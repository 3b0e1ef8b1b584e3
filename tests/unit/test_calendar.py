"""schemas.calendar: working-time arithmetic across nights, weekends, holidays and DST."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.calendar import (
    MAX_CLOSED_DAYS,
    WEEKDAYS,
    BusinessCalendar,
    Hours,
    format_hours,
    parse_hours,
    to_us,
)
from schemas.flags import DAY, HOUR, WorkingTime

MINUTE = 60_000_000
NY = ZoneInfo("America/New_York")
WEEKDAY_HOURS = dict.fromkeys(WEEKDAYS[:5], "08:00-18:00")  # 50 h a week
OFFICE = BusinessCalendar.from_hours("America/New_York", WEEKDAY_HOURS)


def ny(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    """Local New York wall-clock time as µs since the epoch."""
    return to_us(datetime(y, m, d, hh, mm, tzinfo=NY))


def utc(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return to_us(datetime(y, m, d, hh, mm, tzinfo=UTC))


def test_satisfies_the_working_time_protocol() -> None:
    calendar: WorkingTime = OFFICE
    assert calendar.add(ny(2025, 1, 7, 9), HOUR) == ny(2025, 1, 7, 10)


# -- the weekend ----------------------------------------------------------------------------


def test_friday_afternoon_crosses_the_weekend() -> None:
    friday_4pm = ny(2025, 1, 10, 16)
    assert OFFICE.add(friday_4pm, HOUR) == ny(2025, 1, 10, 17)
    assert OFFICE.add(friday_4pm, 4 * HOUR) == ny(2025, 1, 13, 10)  # Monday 10:00
    # 24 h of working time: Fri 2 h, Mon 10 h, Tue 10 h, Wed 2 h.
    assert OFFICE.add(friday_4pm, 24 * HOUR) == ny(2025, 1, 15, 10)


def test_a_span_ending_at_closing_time_ends_at_the_next_opening() -> None:
    # Nothing more has elapsed until Monday 08:00, so that is the deadline.
    friday_4pm = ny(2025, 1, 10, 16)
    assert OFFICE.add(friday_4pm, 2 * HOUR) == ny(2025, 1, 13, 8)
    assert OFFICE.add(friday_4pm, 2 * HOUR - 1) == ny(2025, 1, 10, 18) - 1
    assert OFFICE.working_time(friday_4pm, ny(2025, 1, 13, 8)) == 2 * HOUR


def test_start_on_saturday_counts_from_monday_opening() -> None:
    saturday = ny(2025, 1, 11, 12)
    assert OFFICE.add(saturday, 0) == ny(2025, 1, 13, 8)
    assert OFFICE.add(saturday, 90 * MINUTE) == ny(2025, 1, 13, 9, 30)
    assert OFFICE.add(saturday, 10 * HOUR) == ny(2025, 1, 14, 8)


def test_start_outside_hours_on_a_weekday() -> None:
    assert OFFICE.add(ny(2025, 1, 7, 6), HOUR) == ny(2025, 1, 7, 9)  # before opening
    assert OFFICE.add(ny(2025, 1, 7, 20), HOUR) == ny(2025, 1, 8, 9)  # after closing
    assert OFFICE.add(ny(2025, 1, 7, 18), 0) == ny(2025, 1, 8, 8)  # closing is closed


def test_zero_duration_inside_hours_is_the_start() -> None:
    start = ny(2025, 1, 7, 9, 17) + 123
    assert OFFICE.add(start, 0) == start
    assert OFFICE.add(ny(2025, 1, 7, 8), 0) == ny(2025, 1, 7, 8)  # opening is open


def test_negative_duration_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        OFFICE.add(ny(2025, 1, 7, 9), -1)


# -- holidays -------------------------------------------------------------------------------


def test_holidays_are_skipped() -> None:
    # Christmas 2025 is a Thursday; the office also closes Friday the 26th.
    calendar = BusinessCalendar.from_hours(
        "America/New_York", WEEKDAY_HOURS, [date(2025, 12, 25), date(2025, 12, 26)]
    )
    christmas_eve_5pm = ny(2025, 12, 24, 17)
    assert calendar.add(christmas_eve_5pm, 2 * HOUR) == ny(2025, 12, 29, 9)
    assert OFFICE.add(christmas_eve_5pm, 2 * HOUR) == ny(2025, 12, 25, 9)
    assert calendar.working_time(ny(2025, 12, 22), ny(2025, 12, 29)) == 30 * HOUR


def test_a_holiday_on_a_closed_day_changes_nothing() -> None:
    calendar = BusinessCalendar.from_hours("America/New_York", WEEKDAY_HOURS, [date(2025, 1, 11)])
    start = ny(2025, 1, 10, 12)
    assert calendar.add(start, 20 * HOUR) == OFFICE.add(start, 20 * HOUR)


def test_holidays_across_new_year() -> None:
    calendar = BusinessCalendar.from_hours(
        "America/New_York", WEEKDAY_HOURS, [date(2025, 12, 31), date(2026, 1, 1)]
    )
    assert calendar.add(ny(2025, 12, 30, 17), 2 * HOUR) == ny(2026, 1, 2, 9)


# -- long durations -------------------------------------------------------------------------


def test_multi_week_duration() -> None:
    # 14 "days" of working time = 336 h = 6 weeks of 50 h + 36 h (Mon, Tue, Wed, 6 h Thu).
    monday = ny(2025, 1, 6, 8)
    assert OFFICE.add(monday, 14 * DAY) == ny(2025, 2, 20, 14)
    assert OFFICE.working_time(monday, ny(2025, 2, 20, 14)) == 14 * DAY


def test_whole_weeks_end_at_the_next_opening() -> None:
    monday = ny(2025, 1, 6, 8)
    assert OFFICE.add(monday, 50 * HOUR) == ny(2025, 1, 13, 8)
    assert OFFICE.add(monday, 52 * 50 * HOUR) == ny(2026, 1, 5, 8)  # across a year end


def test_a_year_of_working_time_is_fast_and_exact() -> None:
    start = ny(2025, 1, 1)
    end = OFFICE.add(start, 365 * DAY)  # 8,760 working hours: about 3.4 years
    assert OFFICE.working_time(start, end) == 365 * DAY
    assert end > ny(2028, 5, 1)


# -- daylight saving time (New York: 2025-03-09 02:00 -> 03:00, 2025-11-02 02:00 -> 01:00) --


def test_spring_forward_weekend() -> None:
    # Friday 16:00 EST (21:00 UTC) + 4 h -> Monday 10:00 EDT, which is 14:00 UTC, not 15:00.
    assert OFFICE.add(ny(2025, 3, 7, 16), 4 * HOUR) == utc(2025, 3, 10, 14)
    assert OFFICE.working_time(ny(2025, 3, 10, 8), ny(2025, 3, 10, 18)) == 10 * HOUR


def test_fall_back_weekend() -> None:
    # Friday 16:00 EDT + 4 h -> Monday 10:00 EST, which is 15:00 UTC.
    assert OFFICE.add(ny(2025, 10, 31, 16), 4 * HOUR) == utc(2025, 11, 3, 15)


def test_two_weeks_across_spring_forward() -> None:
    assert OFFICE.add(ny(2025, 3, 3, 8), 100 * HOUR) == utc(2025, 3, 17, 12)  # Mon 08:00 EDT


def test_round_the_clock_days_have_23_and_25_hours_at_dst_changes() -> None:
    calendar = BusinessCalendar.round_the_clock("America/New_York")
    assert calendar.working_time(ny(2025, 3, 9), ny(2025, 3, 10)) == 23 * HOUR
    assert calendar.working_time(ny(2025, 11, 2), ny(2025, 11, 3)) == 25 * HOUR
    assert calendar.add(ny(2025, 3, 8, 12), DAY) == ny(2025, 3, 9, 13)  # 24 real hours


def test_hours_spanning_the_changed_hour() -> None:
    night = BusinessCalendar.from_hours("America/New_York", {"sun": "00:00-06:00"})
    assert night.working_time(ny(2025, 3, 9), ny(2025, 3, 10)) == 5 * HOUR
    assert night.working_time(ny(2025, 11, 2), ny(2025, 11, 3)) == 7 * HOUR
    assert night.working_time(ny(2025, 6, 1), ny(2025, 6, 2)) == 6 * HOUR


def test_an_opening_in_the_skipped_hour_moves_forward_by_the_gap() -> None:
    calendar = BusinessCalendar.from_hours("America/New_York", {"sun": "02:30-05:00"})
    saturday = ny(2025, 3, 8, 12)
    assert calendar.add(saturday, 0) == utc(2025, 3, 9, 7, 30)  # 03:30 EDT
    assert calendar.working_time(saturday, ny(2025, 3, 10)) == 90 * MINUTE


# -- construction ---------------------------------------------------------------------------


def test_from_hours_and_round_trip_of_hours() -> None:
    assert parse_hours("08:00-18:00") == (480, 1080)
    assert parse_hours(" 8:30 - 24:00 ") == (510, 1440)
    assert format_hours((510, 1440)) == "08:30-24:00"
    calendar = BusinessCalendar.from_hours("UTC", {"mon": "08:00-18:00", "sat": None})
    assert calendar.week == ((480, 1080), None, None, None, None, None, None)
    assert calendar == BusinessCalendar("UTC", ((480, 1080),) + (None,) * 6)
    assert hash(calendar) == hash(BusinessCalendar("UTC", ((480, 1080),) + (None,) * 6))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("18:00-08:00", "opening must be before closing"),
        ("08:00-08:00", "opening must be before closing"),
        ("8-18", "HH:MM-HH:MM"),
        ("24:00-24:00", "opening time 24:00"),
        ("08:00-24:30", "closing time 24:30"),
        ("08:61-18:00", "opening time 08:61"),
    ],
)
def test_bad_hours(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_hours(text)


def test_construction_is_validated() -> None:
    with pytest.raises(ValueError, match="no working day"):
        BusinessCalendar("UTC", (None,) * 7)
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        BusinessCalendar.from_hours("Mars/Olympus", WEEKDAY_HOURS)
    with pytest.raises(ValueError, match="7 days"):
        BusinessCalendar("UTC", ((0, 60),) * 5)
    bad: tuple[Hours | None, ...] = ((600, 480),) + (None,) * 6
    with pytest.raises(ValueError, match="bad hours for mon"):
        BusinessCalendar("UTC", bad)
    with pytest.raises(ValueError, match="unknown weekday 'tues'"):
        BusinessCalendar.from_hours("UTC", {"tues": "08:00-18:00"})


def test_holidays_may_not_close_the_calendar_for_a_year() -> None:
    start = date(2025, 1, 1)
    closed = [start + timedelta(days=i) for i in range(MAX_CLOSED_DAYS)]
    with pytest.raises(ValueError, match="no working day from 2025-01-01 to 2026-01-01"):
        BusinessCalendar.from_hours("UTC", dict.fromkeys(WEEKDAYS, "09:00-17:00"), closed)
    # One day less is allowed, and add() still finds the working day after it.
    calendar = BusinessCalendar.from_hours(
        "UTC", dict.fromkeys(WEEKDAYS, "09:00-17:00"), closed[:-1]
    )
    assert calendar.add(utc(2025, 1, 1), HOUR) == utc(2026, 1, 1, 10)


def test_a_year_closed_on_weekdays_only_counts_working_weekdays() -> None:
    # Every Mon-Fri of 2025 is a holiday, weekends are not working days: refused.
    start = date(2025, 1, 1)
    all_year = [start + timedelta(days=i) for i in range(400)]
    with pytest.raises(ValueError, match="no working day"):
        BusinessCalendar.from_hours("UTC", WEEKDAY_HOURS, all_year)


# -- properties -----------------------------------------------------------------------------

CALENDARS = [
    OFFICE,
    BusinessCalendar.from_hours(
        "America/New_York",
        {**WEEKDAY_HOURS, "fri": "08:00-16:00", "sun": "01:00-03:30"},
        [date(2025, 12, 25), date(2026, 1, 1), date(2024, 7, 4)],
    ),
    # Lord Howe Island moves its clocks by 30 minutes at 02:00.
    BusinessCalendar.from_hours(
        "Australia/Lord_Howe", {"mon": "09:00-17:30", "sun": "01:30-02:45", "sat": "00:00-24:00"}
    ),
    BusinessCalendar.from_hours("Asia/Kolkata", {"wed": "10:15-10:45"}),
    BusinessCalendar.from_hours("Europe/London", {"sun": "00:00-24:00", "mon": "00:00-24:00"}),
]
ROUND_THE_CLOCK = [
    BusinessCalendar.round_the_clock(),
    BusinessCalendar.round_the_clock("America/New_York"),
    BusinessCalendar.round_the_clock("Australia/Lord_Howe"),
]

LO = utc(2023, 1, 1)
HI = utc(2027, 1, 1)
starts = st.one_of(
    st.integers(LO, HI),
    st.integers(0, (HI - LO) // (15 * MINUTE)).map(lambda k: LO + k * 15 * MINUTE),
)
durations = st.one_of(
    st.integers(0, 8 * 7 * DAY),
    st.integers(0, 8 * 7 * 4 * 24).map(lambda k: k * 15 * MINUTE),
    st.integers(0, 3 * HOUR),
)
calendars = st.sampled_from(CALENDARS)


def reference_add(calendar: BusinessCalendar, start: int, duration: int) -> int:
    """add() the slow way: day by day from the start's local date, same semantics."""
    zone = ZoneInfo(calendar.timezone)
    day = datetime.fromtimestamp(start / 1e6, zone).date() - timedelta(days=1)
    remaining = duration
    while True:
        hours = calendar.week[day.weekday()]
        if hours is not None and day not in calendar.holidays:
            (oh, om), (ch, cm) = divmod(hours[0], 60), divmod(hours[1], 60)
            local = datetime(day.year, day.month, day.day, tzinfo=zone)
            opening = to_us(local.replace(hour=oh, minute=om))
            closing = to_us(
                datetime.combine(day + timedelta(days=1), datetime.min.time(), zone)
                if ch == 24
                else local.replace(hour=ch, minute=cm)
            )
            begin = max(opening, start)
            if begin < closing:
                if remaining < closing - begin:
                    return begin + remaining
                remaining -= closing - begin
        day += timedelta(days=1)


@settings(max_examples=300, deadline=None)
@given(calendars, starts, durations)
def test_matches_a_day_by_day_reference(calendar: BusinessCalendar, s: int, d: int) -> None:
    assert calendar.add(s, d) == reference_add(calendar, s, d)


@settings(max_examples=300, deadline=None)
@given(calendars, starts, durations)
def test_result_is_the_latest_instant_with_that_much_working_time(
    calendar: BusinessCalendar, s: int, d: int
) -> None:
    end = calendar.add(s, d)
    assert end >= s
    assert calendar.working_time(s, end) == d
    assert calendar.working_time(s, end + 1) == d + 1  # work resumes right at `end`
    assert calendar.is_working(end)


@settings(max_examples=300, deadline=None)
@given(calendars, starts, durations, durations)
def test_monotonic_in_duration(calendar: BusinessCalendar, s: int, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    assert calendar.add(s, lo) <= calendar.add(s, hi)
    if lo < hi:
        assert calendar.add(s, lo) < calendar.add(s, hi)


@settings(max_examples=300, deadline=None)
@given(calendars, starts, durations, durations)
def test_spans_add_up(calendar: BusinessCalendar, s: int, a: int, b: int) -> None:
    assert calendar.add(calendar.add(s, a), b) == calendar.add(s, a + b)


@settings(max_examples=300, deadline=None)
@given(calendars, starts, starts)
def test_working_time_is_additive(calendar: BusinessCalendar, a: int, b: int) -> None:
    lo, hi = sorted((a, b))
    mid = (lo + hi) // 2
    whole = calendar.working_time(lo, hi)
    assert whole == calendar.working_time(lo, mid) + calendar.working_time(mid, hi)
    assert 0 <= whole <= hi - lo


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ROUND_THE_CLOCK), starts, durations)
def test_round_the_clock_is_plain_addition(calendar: BusinessCalendar, s: int, d: int) -> None:
    assert calendar.add(s, d) == s + d
    assert calendar.working_time(s, s + d) == d
