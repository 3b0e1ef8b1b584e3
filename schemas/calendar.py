"""Business hours: where a span of *working* time ends (the `WorkingTime` of schemas.flags).

A `BusinessCalendar` is a week of opening hours in one IANA time zone (zero or one
interval per weekday, local wall-clock time) minus holidays (local dates). Times are
integer microseconds since the Unix epoch, UTC, like everywhere else in `schemas`.

Semantics of `add(start, duration)`: the result is the *latest* instant `t >= start` such
that exactly `duration` µs of working time lie in `[start, t]`. Equivalently, a clock
that only runs during working hours, started at `start`, has not yet passed `duration` at
`t` and passes it right after. So:

- a start outside working hours starts counting at the next opening;
- `add(start, 0)` is `start` inside working hours, else the next opening;
- a span that ends exactly at a closing time ends at the next opening instead (no
  working time passes in between, so nothing is "later" until work resumes);
- `now > add(start, target)` holds exactly when more than `target` of working time has
  passed since `start`, the same rule `now > start + target` gives without a calendar;
- `add(add(s, a), b) == add(s, a + b)`, and with hours 00:00-24:00 every day and no
  holidays, `add(s, d) == s + d`.

Each local day's opening and closing are converted to UTC with that day's offset
(zoneinfo), so daylight-saving changes are exact: 08:00-18:00 is 10 h of working time on
every day, and 00:00-24:00 is 23 h on the spring-forward day and 25 h on the fall-back
day. A boundary that falls in a skipped hour (02:30 on a spring-forward night in New
York) takes the offset before the change, i.e. it moves forward by the gap (03:30); an
ambiguous one (01:30 on a fall-back night) is its first occurrence.

Speed: the working intervals of one local calendar year are built once (about a
millisecond) and kept with their running totals, so `add` and `working_time` are a
couple of binary searches per year crossed, whatever the duration.

Pure: no I/O, no clock.
"""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WEEKDAYS: tuple[str, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")

# [open, close) in minutes after local midnight; 0 <= open < close <= 1440 (24:00).
Hours = tuple[int, int]

MINUTES_PER_DAY = 24 * 60
# Holidays may not leave a stretch this long (or longer) without any working time: a
# calendar closed for a year is a configuration mistake, and refusing it bounds `add`.
MAX_CLOSED_DAYS = 366

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_MINUTE_US = 60_000_000
_HOURS_RE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


def parse_hours(text: str) -> Hours:
    """'08:00-18:00' -> (480, 1080): an opening interval in minutes after local midnight.

    The closing time may be 24:00 (midnight at the end of the day). Raises ValueError
    with a message fit for an operator."""
    match = _HOURS_RE.match(text)
    if match is None:
        raise ValueError(f"bad hours {text!r}: use HH:MM-HH:MM, e.g. 08:00-18:00")
    oh, om, ch, cm = (int(g) for g in match.groups())
    if oh > 23 or om > 59:
        raise ValueError(f"bad hours {text!r}: opening time {oh:02d}:{om:02d} is not a time")
    if ch > 24 or cm > 59 or (ch == 24 and cm != 0):
        raise ValueError(f"bad hours {text!r}: closing time {ch:02d}:{cm:02d} is not a time")
    opening, closing = oh * 60 + om, ch * 60 + cm
    if opening >= closing:
        raise ValueError(
            f"bad hours {text!r}: opening must be before closing "
            "(one interval per day; overnight hours are not supported)"
        )
    return opening, closing


def format_hours(hours: Hours) -> str:
    """(480, 1080) -> '08:00-18:00'."""
    (oh, om), (ch, cm) = divmod(hours[0], 60), divmod(hours[1], 60)
    return f"{oh:02d}:{om:02d}-{ch:02d}:{cm:02d}"


def load_zone(name: str) -> ZoneInfo:
    """The IANA time zone `name`; ValueError (not KeyError) when there is none."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise ValueError(
            f"unknown time zone {name!r} (use an IANA name such as America/New_York)"
        ) from None


def to_us(moment: datetime) -> int:
    """An aware datetime as µs since the Unix epoch (exact, no floats)."""
    return (moment - _EPOCH) // _US


def from_us(instant: int) -> datetime:
    """µs since the Unix epoch as an aware UTC datetime."""
    return _EPOCH + timedelta(microseconds=instant)


@dataclass(frozen=True, slots=True)
class _Year:
    """The working intervals of the local dates of one year, in UTC µs, sorted and
    disjoint, all within [lower, upper) (local midnights of 1 January, this year and
    the next). cum[i] is the working time of intervals 0..i-1."""

    lower: int
    upper: int
    opens: list[int]
    closes: list[int]
    cum: list[int]

    @property
    def total(self) -> int:
        return self.cum[-1]

    def before(self, t: int) -> int:
        """Working time of this year's intervals that lies before instant t."""
        k = bisect_left(self.opens, t)  # intervals 0..k-1 open before t
        if k == 0:
            return 0
        return self.cum[k] - max(0, self.closes[k - 1] - t)


@dataclass(frozen=True)
class BusinessCalendar:
    """Opening hours per weekday (Monday first; None: closed all day) in an IANA time
    zone, minus holidays (local dates). Satisfies schemas.flags.WorkingTime.

    Construct directly with minutes (`week=((480, 1080), ..., None, None)`), or with
    `BusinessCalendar.from_hours("America/New_York", {"mon": "08:00-18:00", ...})`.
    Raises ValueError for an unknown time zone, malformed hours, a week without a
    working day, or holidays that leave MAX_CLOSED_DAYS days in a row without work.
    """

    timezone: str
    week: tuple[Hours | None, ...]
    holidays: frozenset[date] = frozenset()
    _zone: ZoneInfo = field(init=False, repr=False, compare=False)
    _years: dict[int, _Year] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        zone = load_zone(self.timezone)
        week = tuple(self.week)
        if len(week) != 7:
            raise ValueError(f"a week has 7 days, Monday first; got {len(week)} entries")
        for name, hours in zip(WEEKDAYS, week, strict=True):
            if hours is None:
                continue
            opening, closing = hours
            if not (0 <= opening < closing <= MINUTES_PER_DAY):
                raise ValueError(
                    f"bad hours for {name}: {hours!r} (minutes after midnight, "
                    "0 <= open < close <= 1440)"
                )
        if all(hours is None for hours in week):
            raise ValueError("no working day: give hours for at least one weekday")
        holidays = frozenset(self.holidays)
        for day in holidays:
            if not isinstance(day, date) or isinstance(day, datetime):
                raise ValueError(f"a holiday is a date, not {day!r}")
            if not 1 < day.year < 9999:
                raise ValueError(f"holiday {day} is outside years 2-9998")
        object.__setattr__(self, "week", tuple((h[0], h[1]) if h else None for h in week))
        object.__setattr__(self, "holidays", holidays)
        object.__setattr__(self, "_zone", zone)
        object.__setattr__(self, "_years", {})
        self._check_closures()

    @classmethod
    def from_hours(
        cls,
        timezone: str,
        hours: Mapping[str, str | None],
        holidays: Iterable[date] = (),
    ) -> BusinessCalendar:
        """From {"mon": "08:00-18:00", ...}; a weekday left out (or None) is closed."""
        unknown = sorted(set(hours) - set(WEEKDAYS))
        if unknown:
            raise ValueError(f"unknown weekday {unknown[0]!r} (use {', '.join(WEEKDAYS)})")
        week: list[Hours | None] = []
        for name in WEEKDAYS:
            text = hours.get(name)
            week.append(None if text is None else parse_hours(text))
        return cls(timezone, tuple(week), frozenset(holidays))

    @classmethod
    def round_the_clock(cls, timezone: str = "UTC") -> BusinessCalendar:
        """Every hour counts: add(s, d) == s + d (useful to test and to compare)."""
        return cls(timezone, ((0, MINUTES_PER_DAY),) * 7)

    # -- WorkingTime ---------------------------------------------------------------------

    def add(self, start: int, duration: int) -> int:
        """The latest instant t >= start with exactly `duration` µs of working time in
        [start, t] (see the module docstring)."""
        if duration < 0:
            raise ValueError(f"duration must not be negative, got {duration}")
        year = self._year_of(start)
        goal = self._years_get(year).before(start) + duration
        while True:
            chunk = self._years_get(year)
            if goal < chunk.total:
                j = bisect_right(chunk.cum, goal) - 1  # cum[j] <= goal < cum[j+1]
                return max(start, chunk.opens[j] + (goal - chunk.cum[j]))
            goal -= chunk.total
            year += 1

    # -- more of the same arithmetic -----------------------------------------------------

    def working_time(self, start: int, end: int) -> int:
        """µs of working time in [start, end] (0 when end <= start)."""
        if end <= start:
            return 0
        total = 0
        for year in range(self._year_of(start), self._year_of(end) + 1):
            chunk = self._years_get(year)
            total += chunk.before(end) - chunk.before(start)
        return total

    def is_working(self, instant: int) -> bool:
        """Whether `instant` lies inside working hours (opening included, closing not)."""
        return self.working_time(instant, instant + 1) == 1

    # -- internals -----------------------------------------------------------------------

    def _local_midnight(self, day: date) -> int:
        return to_us(datetime(day.year, day.month, day.day, tzinfo=self._zone))

    def _year_of(self, instant: int) -> int:
        """The year whose chunk [lower, upper) holds `instant`."""
        year = from_us(instant).astimezone(self._zone).year
        # Only a boundary in a skipped or repeated hour can put the two apart.
        if instant < self._years_get(year).lower:
            return year - 1
        if instant >= self._years_get(year).upper:
            return year + 1
        return year

    def _years_get(self, year: int) -> _Year:
        chunk = self._years.get(year)
        if chunk is None:
            chunk = self._build_year(year)
            self._years[year] = chunk  # idempotent: racing builders store equal values
        return chunk

    def _build_year(self, year: int) -> _Year:
        if not 1 <= year < 9999:
            raise ValueError(f"year {year} is outside what the calendar can compute")
        zone = self._zone
        lower = self._local_midnight(date(year, 1, 1))
        upper = self._local_midnight(date(year + 1, 1, 1))
        opens: list[int] = []
        closes: list[int] = []
        cum = [0]
        cursor = lower
        day = date(year, 1, 1)
        one_day = timedelta(days=1)
        while day.year == year:
            hours = self.week[day.weekday()]
            if hours is not None and day not in self.holidays:
                opening, closing = hours
                oh, om = divmod(opening, 60)
                o = to_us(datetime(year, day.month, day.day, oh, om, tzinfo=zone))
                if closing == MINUTES_PER_DAY:
                    c = self._local_midnight(day + one_day)
                else:
                    ch, cm = divmod(closing, 60)
                    c = to_us(datetime(year, day.month, day.day, ch, cm, tzinfo=zone))
                # Clip so the intervals stay sorted and disjoint even where a skipped
                # hour makes local-to-UTC conversion run backwards.
                o = max(o, cursor)
                c = min(c, upper)
                if c > o:
                    opens.append(o)
                    closes.append(c)
                    cum.append(cum[-1] + (c - o))
                    cursor = c
            day += one_day
        return _Year(lower, upper, opens, closes, cum)

    def _check_closures(self) -> None:
        """Refuse holidays that close every working day for MAX_CLOSED_DAYS or more."""
        blocked = sorted(d for d in self.holidays if self.week[d.weekday()] is not None)
        blocked_set = set(blocked)
        one_day = timedelta(days=1)

        def neighbour(day: date, step: timedelta) -> date:
            """The nearest working weekday from `day` in direction `step`, holiday or not."""
            day += step
            while self.week[day.weekday()] is None:
                day += step
            return day

        for first in blocked:
            before = neighbour(first, -one_day)
            if before in blocked_set:
                continue  # not the start of a run
            after = neighbour(first, one_day)
            while after in blocked_set:
                after = neighbour(after, one_day)
            if (after - before).days - 1 >= MAX_CLOSED_DAYS:
                raise ValueError(
                    f"holidays leave no working day from {before + one_day} to "
                    f"{after - one_day}; a calendar must have working time at least "
                    f"every {MAX_CLOSED_DAYS} days"
                )
