"""schemas.sla: the SLA file (shape, merge order, errors) and flags under business hours."""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from itertools import count
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.calendar import WEEKDAYS, BusinessCalendar, to_us
from schemas.events import TrackedEvent
from schemas.flags import (
    DAY,
    DEFAULT_TARGETS,
    HOUR,
    SlaTargets,
    evaluate_flags,
    flag_onsets,
    next_deadline,
)
from schemas.referral import fold
from schemas.sla import (
    SlaConfigError,
    SlaPolicy,
    format_duration,
    load_policy,
    parse_duration,
    parse_policy,
)
from tests.unit.factories import default_data

REPO = Path(__file__).resolve().parents[2]
MINUTE = 60_000_000
NY = ZoneInfo("America/New_York")
SPEC = {
    "routing": {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": 72 * HOUR},
    "scheduling": {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 14 * DAY},
    "unresponsive_attempts": 3,
    "unresponsive_after": 7 * DAY,
    "no_show_grace": 3 * DAY,
    "loop_close": 14 * DAY,
    "calendar": None,
}


def as_dict(targets: SlaTargets) -> dict[str, Any]:
    return {name: getattr(targets, name) for name in SPEC}


def ny(y: int, m: int, d: int, hh: int = 0, mm: int = 0) -> int:
    return to_us(datetime(y, m, d, hh, mm, tzinfo=NY))


# -- durations ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "us"),
    [
        ("90m", 90 * MINUTE),
        ("2h", 2 * HOUR),
        ("14d", 14 * DAY),
        ("1d12h", 36 * HOUR),
        ("2w", 14 * DAY),
        ("1h 30m", 90 * MINUTE),
        ("45s", 45_000_000),
        ("365d", 365 * DAY),
    ],
)
def test_durations(text: str, us: int) -> None:
    assert parse_duration(text) == us
    assert parse_duration(format_duration(us)) == us


@pytest.mark.parametrize(
    "bad", ["", "2", "h", "2x", "-2h", "0h", "0d0h", "12h1d", "1h1h", "1.5h", "366d", 2, True, None]
)
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(bad)


# -- defaults and merging -------------------------------------------------------------------


def test_defaults_are_spec() -> None:
    for policy in (
        SlaPolicy.default(),
        parse_policy(""),
        parse_policy("# nothing but a comment\n"),
        load_policy(None),
        load_policy(""),
    ):
        assert as_dict(policy.targets_for("northwind", "cardiology")) == SPEC
        assert policy.targets_for("anyone", None) == DEFAULT_TARGETS


def test_spelled_out_spec_defaults_change_nothing() -> None:
    policy = parse_policy(
        """
defaults:
  routing:    {stat: 2h, urgent: 24h, routine: 72h}
  scheduling: {stat: 24h, urgent: 72h, routine: 14d}
  unresponsive_attempts: 3
  unresponsive_after: 7d
  no_show_grace: 3d
  loop_close: 14d
"""
    )
    assert policy.targets_for("x", None) == DEFAULT_TARGETS


OVERRIDES = """
defaults:
  no_show_grace: 2d
specialties:
  oncology:
    routing: {routine: 24h}
    loop_close: 10d
orgs:
  northwind:
    routing: {urgent: 12h}
    loop_close: 20d
    specialties:
      cardiology:
        scheduling: {routine: 7d}
      oncology:
        routing: {stat: 1h}
  southwind:
    unresponsive_attempts: 5
"""


def test_org_overrides_merge_key_by_key() -> None:
    targets = parse_policy(OVERRIDES).targets_for("northwind", None)
    assert targets.routing == {"stat": 2 * HOUR, "urgent": 12 * HOUR, "routine": 72 * HOUR}
    assert targets.scheduling == SPEC["scheduling"]
    assert targets.loop_close == 20 * DAY
    assert targets.no_show_grace == 2 * DAY  # from defaults
    assert targets.unresponsive_attempts == 3  # SPEC


def test_specialty_overrides_apply_within_their_org_only() -> None:
    policy = parse_policy(OVERRIDES)
    cardiology = policy.targets_for("northwind", "cardiology")
    assert cardiology.scheduling == {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 7 * DAY}
    assert cardiology.routing["urgent"] == 12 * HOUR  # the org's value still applies
    assert policy.targets_for("southwind", "cardiology").scheduling == SPEC["scheduling"]
    assert policy.targets_for("southwind", "cardiology").unresponsive_attempts == 5
    assert policy.targets_for("elsewhere", "cardiology").no_show_grace == 2 * DAY


def test_resolution_order() -> None:
    # SPEC <- defaults <- specialties[s] <- orgs[o] <- orgs[o].specialties[s]
    policy = parse_policy(OVERRIDES)
    oncology_elsewhere = policy.targets_for("elsewhere", "oncology")
    assert oncology_elsewhere.routing == {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": DAY}
    assert oncology_elsewhere.loop_close == 10 * DAY
    northwind_oncology = policy.targets_for("northwind", "oncology")
    assert northwind_oncology.loop_close == 20 * DAY  # the org beats the global specialty
    assert northwind_oncology.routing == {"stat": HOUR, "urgent": 12 * HOUR, "routine": DAY}
    assert northwind_oncology.no_show_grace == 2 * DAY


def test_targets_are_cached_and_shared() -> None:
    policy = parse_policy(OVERRIDES)
    first = policy.targets_for("northwind", "cardiology")
    assert policy.targets_for("northwind", "cardiology") is first
    # Names the file does not mention share one entry: the cache is as small as the file.
    assert policy.targets_for("northwind", "dermatology") is policy.targets_for("northwind", None)
    assert policy.targets_for("a", "b") is policy.targets_for("c", None)
    assert len(policy._cache) == 3  # (northwind, cardiology), (northwind, -), (-, -)


def test_numeric_org_ids_are_strings() -> None:
    policy = parse_policy("orgs:\n  1234:\n    loop_close: 1d\n")
    assert policy.targets_for("1234", None).loop_close == DAY
    assert policy.org_ids == ("1234",)


def test_yaml_anchors_and_merge_keys() -> None:
    policy = parse_policy(
        """
orgs:
  a: &a {routing: {urgent: 1h}, loop_close: 3d}
  b:
    <<: *a
    loop_close: 4d
"""
    )
    assert policy.targets_for("b", None).routing["urgent"] == HOUR
    assert policy.targets_for("b", None).loop_close == 4 * DAY


def test_calendar_is_built_per_org() -> None:
    policy = parse_policy(
        """
orgs:
  northwind:
    calendar:
      timezone: America/New_York
      hours: {mon: "08:00-18:00", tue: "08:00-18:00", sat: closed}
      holidays: [2025-12-25, "2026-01-01"]
"""
    )
    calendar = policy.targets_for("northwind", "cardiology").calendar
    assert calendar == BusinessCalendar.from_hours(
        "America/New_York",
        {"mon": "08:00-18:00", "tue": "08:00-18:00"},
        [date(2025, 12, 25), date(2026, 1, 1)],
    )
    assert policy.targets_for("southwind", None).calendar is None


# -- errors ---------------------------------------------------------------------------------

SOURCE = "/etc/reftrack/sla.yaml"
SUNDAYS_2025 = [date(2025, 1, 5) + timedelta(weeks=k) for k in range(53)]
CAL = "orgs:\n  a:\n    calendar: {timezone: %s, hours: %s}\n"


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        (
            "orgs:\n  northwind:\n    routing: {urgnt: 12h}\n",
            "orgs.northwind.routing.urgnt",
            "unknown priority 'urgnt' (use stat, urgent or routine)",
        ),
        (
            "orgs:\n  northwind:\n    routng: {urgent: 12h}\n",
            "orgs.northwind.routng",
            "unknown key 'routng' (use routing, scheduling,",
        ),
        ("defaults:\n  loop_closed: 3d\n", "defaults.loop_closed", "unknown key 'loop_closed'"),
        ("orgs:\n  a:\n    urgent: 2h\n", "orgs.a.urgent", "priorities go under routing:"),
        ("routing: {urgent: 2h}\n", "routing", "targets for every org go under defaults:"),
        ("defaults:\n  calendar: {}\n", "defaults.calendar", "set per org"),
        ("defaults:\n  no_show_grace: 3x\n", "defaults.no_show_grace", "bad duration '3x'"),
        ("defaults:\n  loop_close: 14\n", "defaults.loop_close", "a bare number has no unit"),
        (
            "specialties:\n  onc:\n    scheduling: {routine: 0d}\n",
            "specialties.onc.scheduling.routine",
            "must be more than zero",
        ),
        (
            "defaults:\n  unresponsive_attempts: 0\n",
            "defaults.unresponsive_attempts",
            "greater than or equal to 1",
        ),
        (
            "defaults:\n  unresponsive_attempts: three\n",
            "defaults.unresponsive_attempts",
            "expected a whole number",
        ),
        (
            CAL % ("Mars/Olympus", "{mon: '08:00-18:00'}"),
            "orgs.a.calendar.timezone",
            "unknown time zone 'Mars/Olympus'",
        ),
        (
            CAL % ("UTC", "{mon: '18:00-08:00'}"),
            "orgs.a.calendar.hours.mon",
            "bad hours '18:00-08:00': opening must be before closing",
        ),
        (
            CAL % ("UTC", "{mon: '8am-6pm'}"),
            "orgs.a.calendar.hours.mon",
            "bad hours '8am-6pm'",
        ),
        (
            CAL % ("UTC", "{mon: '08:00-18:00', tues: '08:00-18:00'}"),
            "orgs.a.calendar.hours.tues",
            "unknown weekday 'tues'",
        ),
        (CAL % ("UTC", "{}"), "orgs.a.calendar.hours", "no working day"),
        (CAL % ("UTC", "{sat: closed}"), "orgs.a.calendar.hours", "no working day"),
        ("orgs:\n  a:\n    calendar: {timezone: UTC}\n", "orgs.a.calendar.hours", "required"),
        (
            "orgs:\n  a:\n    calendar: {timezone: UTC, hours: {mon: '09:00-17:00'}, "
            "holidays: [2025-12-25, 25/12/2025]}\n",
            "orgs.a.calendar.holidays[1]",
            "expected a date like 2025-12-25",
        ),
        (
            "orgs:\n  a:\n    calendar: {timezone: UTC, hours: {sun: '09:00-17:00'}, "
            f"holidays: [{', '.join(str(d) for d in SUNDAYS_2025)}]}}\n",
            "orgs.a.calendar",
            "holidays leave no working day",
        ),
        ("orgs: [a, b]\n", "orgs", "expected a mapping"),
        ("orgs:\n  a/b: {}\n", "orgs", "'a/b' is not an org id"),
    ],
)
def test_errors_name_the_file_and_the_field(text: str, path: str, problem: str) -> None:
    with pytest.raises(SlaConfigError) as info:
        parse_policy(text, SOURCE)
    error = info.value
    assert isinstance(error, ValueError)
    assert error.path == path
    assert str(error).startswith(f"sla file {SOURCE}: {path}: ")
    assert problem in str(error)


def test_every_problem_is_reported() -> None:
    with pytest.raises(SlaConfigError) as info:
        parse_policy("defaults:\n  loop_close: 1x\n  no_show_grace: 2y\n", SOURCE)
    assert sorted(path for path, _ in info.value.problems) == [
        "defaults.loop_close",
        "defaults.no_show_grace",
    ]
    assert "defaults.no_show_grace: bad duration '2y'" in str(info.value)
    assert "defaults.loop_close: bad duration '1x'" in str(info.value)
    assert str(info.value).count("; ") == 1


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("orgs:\n  a:\n   routing: {urgent: 1h\n", "invalid YAML at line 4, column 1: "),
        ("orgs:\n  a: {}\n  a: {}\n", "invalid YAML at line 3, column 3: duplicate key 'a'"),
        ("orgs:\n\tnorthwind: {}\n", "invalid YAML at line 2, column 1: "),
        ("- northwind\n", "expected a mapping at the top level"),
    ],
)
def test_invalid_yaml(text: str, problem: str) -> None:
    with pytest.raises(SlaConfigError) as info:
        parse_policy(text, SOURCE)
    assert str(info.value).startswith(f"sla file {SOURCE}: {problem}")
    assert info.value.path == ""


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(SlaConfigError, match=re.escape(f"sla file {missing}: cannot read it: ")):
        load_policy(missing)
    with pytest.raises(SlaConfigError, match="cannot read it"):
        load_policy(tmp_path)  # a directory
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(SlaConfigError, match="not UTF-8"):
        load_policy(str(binary))


def test_errors_from_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "sla.yaml"
    path.write_text("orgs:\n  northwind:\n    routing: {urgnt: 12h}\n")
    with pytest.raises(SlaConfigError) as info:
        load_policy(path)
    assert str(info.value) == (
        f"sla file {path}: orgs.northwind.routing.urgnt: unknown priority 'urgnt' "
        "(use stat, urgent or routine)"
    )


# -- the shipped example and the docs -------------------------------------------------------


def test_the_deploy_example_loads() -> None:
    policy = load_policy(REPO / "deploy" / "sla.example.yaml")
    northwind = policy.targets_for("northwind", "cardiology")
    assert northwind.calendar is not None
    assert northwind.routing["urgent"] == 12 * HOUR
    assert northwind.scheduling["routine"] == 50 * HOUR
    southwind = policy.targets_for("southwind", None)
    assert southwind.calendar == northwind.calendar
    assert southwind.unresponsive_attempts == 4
    assert policy.targets_for("eastbay", None).calendar is None
    # What its comment promises: Friday 15:00 + 12 working hours = Tuesday 09:00.
    assert northwind.deadline(ny(2026, 1, 9, 15), 12 * HOUR) == ny(2026, 1, 13, 9)


def test_the_yaml_in_the_docs_is_valid() -> None:
    text = (REPO / "docs" / "sla.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) >= 3
    for block in blocks:
        parse_policy(block, "docs/sla.md")


# -- flags under business hours -------------------------------------------------------------

OFFICE = """
orgs:
  northwind:
    routing: {urgent: 24h}
    calendar:
      timezone: America/New_York
      hours: {mon: "08:00-18:00", tue: "08:00-18:00", wed: "08:00-18:00",
              thu: "08:00-18:00", fri: "08:00-18:00"}
      holidays: [2025-01-20]
"""
_ids = count()


def ev(kind: str, at: int, org: str = "northwind", **data: Any) -> TrackedEvent:
    payload = {**default_data(kind, scheduled_at=at + 30 * DAY, rescheduled_at=at), **data}
    return TrackedEvent(f"e{next(_ids):06d}", org, "R-1", kind, at, "ehr", None, payload)


def test_routing_overdue_across_a_weekend() -> None:
    targets = parse_policy(OFFICE).targets_for("northwind", "cardiology")
    created = ny(2025, 1, 10, 16)  # Friday 16:00
    state = fold([ev("referral.created", created, priority="urgent")])
    # 24 working hours: Fri 16-18 (2 h), Mon 10 h, Tue 10 h, Wed 08-10 (2 h).
    deadline = ny(2025, 1, 15, 10)
    assert flag_onsets(state, targets)["routing_overdue"] == deadline
    assert next_deadline(state, created, targets) == deadline
    assert "routing_overdue" not in evaluate_flags(state, created + 24 * HOUR, targets)
    assert "routing_overdue" not in evaluate_flags(state, deadline - 1, targets)
    assert "routing_overdue" not in evaluate_flags(state, deadline, targets)
    assert "routing_overdue" in evaluate_flags(state, deadline + 1, targets)
    # Without the calendar the same target passes on Saturday at 16:00.
    plain = parse_policy(OFFICE).targets_for("southwind", None)
    assert flag_onsets(state, plain)["routing_overdue"] == created + 24 * HOUR


def test_next_deadline_skips_the_holiday() -> None:
    # Friday 17 January 2025 + 24 working hours, with Monday the 20th a holiday.
    targets = parse_policy(OFFICE).targets_for("northwind", None)
    state = fold([ev("referral.created", ny(2025, 1, 17, 16), priority="urgent")])
    # Fri 2 h, (Mon off), Tue 10 h, Wed 10 h, Thu 2 h.
    assert next_deadline(state, ny(2025, 1, 17, 16), targets) == ny(2025, 1, 23, 10)


def test_every_timed_rule_counts_working_time() -> None:
    targets = parse_policy(
        OFFICE + "    no_show_grace: 10h\n    loop_close: 10h\n    unresponsive_after: 10h\n"
    ).targets_for("northwind", None)
    friday = ny(2025, 1, 10, 17)
    monday_5pm = ny(2025, 1, 13, 17)
    no_show = fold([ev("referral.created", friday), ev("appointment.no_show", friday)])
    assert flag_onsets(no_show, targets)["no_show_not_rescheduled"] == monday_5pm
    seen = fold([ev("referral.created", friday), ev("appointment.completed", friday)])
    assert flag_onsets(seen, targets)["loop_not_closed"] == monday_5pm
    reached = fold([ev("referral.created", friday), ev("patient.outreach", friday)])
    assert flag_onsets(reached, targets)["patient_unresponsive"] == monday_5pm


OFFICE_CALENDAR = parse_policy(OFFICE).targets_for("northwind", None).calendar
assert OFFICE_CALENDAR is not None


@settings(max_examples=300, deadline=None)
@given(
    st.integers(ny(2024, 1, 1), ny(2026, 1, 1)),
    st.integers(0, 10 * DAY),
    st.sampled_from(["stat", "urgent", "routine"]),
)
def test_overdue_exactly_when_more_working_time_than_the_target_has_passed(
    created: int, elapsed: int, priority: str
) -> None:
    """With a calendar, `now > deadline` means what `now > created + target` means
    without one: more than the target has passed, counting working time only."""
    assert OFFICE_CALENDAR is not None
    targets = parse_policy(OFFICE).targets_for("northwind", None)
    state = fold([ev("referral.created", created, priority=priority)])
    now = created + elapsed
    overdue = "routing_overdue" in evaluate_flags(state, now, targets)
    worked = OFFICE_CALENDAR.working_time(created, now)
    assert overdue is (worked > targets.routing[priority])


def test_weekday_names() -> None:
    assert WEEKDAYS == ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
