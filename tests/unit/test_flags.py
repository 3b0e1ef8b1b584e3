"""SPEC §5: at-risk flags at their boundaries; only open referrals carry flags."""

from __future__ import annotations

from itertools import count
from typing import Any

import pytest

from schemas.events import TrackedEvent
from schemas.flags import DAY, DEFAULT_TARGETS, FLAG_RULES, HOUR, SlaTargets, evaluate_flags
from schemas.referral import ReferralState, Status, fold
from tests.unit.factories import default_data

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z in µs
US = 1
_ids = count()


def ev(kind: str, at: int, **data: Any) -> TrackedEvent:
    defaults = default_data(kind, scheduled_at=T0 + 30 * DAY, rescheduled_at=T0 + 31 * DAY)
    payload = {**defaults, **data}
    return TrackedEvent(f"e{next(_ids):06d}", "northwind", "R-1", kind, at, "ehr", None, payload)


def created(priority: str = "routine", at: int = T0) -> TrackedEvent:
    return ev("referral.created", at, priority=priority)


def flags(events: list[TrackedEvent], now: int, targets: SlaTargets = DEFAULT_TARGETS) -> list[str]:
    return evaluate_flags(fold(events), now, targets)


def _around(boundary: int) -> list[tuple[int, bool]]:
    """(now, should the flag hold): just before, at, and just after the boundary."""
    return [(boundary - US, False), (boundary, False), (boundary + US, True)]


ROUTING = {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": 72 * HOUR}
SCHEDULING = {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 14 * DAY}


# -- routing_overdue ----------------------------------------------------------------------


@pytest.mark.parametrize(("priority", "target"), ROUTING.items())
@pytest.mark.parametrize("offset", [-US, 0, US])
def test_routing_overdue_boundary(priority: str, target: int, offset: int) -> None:
    now = T0 + target + offset
    assert ("routing_overdue" in flags([created(priority)], now)) is (offset > 0)


@pytest.mark.parametrize("kind", ["referral.routed", "referral.accepted"])
def test_routing_overdue_cleared_by_routing(kind: str) -> None:
    late = T0 + 10 * DAY
    assert "routing_overdue" not in flags([created("stat"), ev(kind, late)], late + DAY)


def test_routing_overdue_measured_from_created() -> None:
    start = T0 + 5 * DAY
    assert "routing_overdue" not in flags([created("stat", start)], start + 2 * HOUR)
    assert "routing_overdue" in flags([created("stat", start)], start + 2 * HOUR + US)


# -- scheduling_overdue -------------------------------------------------------------------


@pytest.mark.parametrize(("priority", "target"), SCHEDULING.items())
@pytest.mark.parametrize("offset", [-US, 0, US])
def test_scheduling_overdue_boundary(priority: str, target: int, offset: int) -> None:
    events = [created(priority), ev("referral.routed", T0 + HOUR)]
    assert ("scheduling_overdue" in flags(events, T0 + target + offset)) is (offset > 0)


def test_scheduling_overdue_cleared_by_scheduled() -> None:
    events = [created("stat"), ev("referral.routed", T0), ev("appointment.scheduled", T0 + 5 * DAY)]
    assert "scheduling_overdue" not in flags(events, T0 + 6 * DAY)


def test_rescheduled_alone_does_not_clear_scheduling_overdue() -> None:
    events = [created("stat"), ev("appointment.rescheduled", T0 + HOUR)]
    assert "scheduling_overdue" in flags(events, T0 + 2 * DAY)


def test_custom_targets_are_used() -> None:
    targets = SlaTargets(routing={"stat": HOUR, "urgent": HOUR, "routine": HOUR})
    assert flags([created()], T0 + HOUR + US, targets) == ["routing_overdue"]
    assert flags([created()], T0 + HOUR + US) == []


# -- patient_unresponsive -----------------------------------------------------------------


def _outreach(*ats: int) -> list[TrackedEvent]:
    return [created(), ev("referral.routed", T0)] + [ev("patient.outreach", at) for at in ats]


@pytest.mark.parametrize(("now", "expected"), _around(T0 + HOUR + 7 * DAY))
def test_patient_unresponsive_after_seven_days(now: int, expected: bool) -> None:
    assert ("patient_unresponsive" in flags(_outreach(T0 + HOUR), now)) is expected


def test_patient_unresponsive_seven_days_from_first_outreach() -> None:
    # The earliest outreach counts, whatever the arrival order.
    events = _outreach(T0 + 3 * DAY, T0 + HOUR)
    assert "patient_unresponsive" in flags(events, T0 + HOUR + 7 * DAY + US)


@pytest.mark.parametrize(("attempts", "expected"), [(1, False), (2, False), (3, True), (4, True)])
def test_patient_unresponsive_after_three_attempts(attempts: int, expected: bool) -> None:
    events = _outreach(*(T0 + i * HOUR for i in range(1, attempts + 1)))
    assert ("patient_unresponsive" in flags(events, T0 + DAY)) is expected


def test_duplicate_outreach_is_one_attempt() -> None:
    events = _outreach(T0 + HOUR, T0 + 2 * HOUR)
    assert "patient_unresponsive" not in flags(events + events[-2:], T0 + DAY)


@pytest.mark.parametrize("kind", ["patient.responded", "appointment.scheduled"])
def test_patient_unresponsive_cleared_by_contact_or_scheduling(kind: str) -> None:
    events = _outreach(T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR) + [ev(kind, T0 + 4 * HOUR)]
    assert "patient_unresponsive" not in flags(events, T0 + 30 * DAY)


def test_no_outreach_no_unresponsive() -> None:
    assert "patient_unresponsive" not in flags([created()], T0 + 365 * DAY)


# -- no_show_not_rescheduled --------------------------------------------------------------


@pytest.mark.parametrize("miss", ["appointment.no_show", "appointment.cancelled"])
@pytest.mark.parametrize("offset", [-US, 0, US])
def test_no_show_not_rescheduled_boundary(miss: str, offset: int) -> None:
    at = T0 + 10 * DAY
    events = [created(), ev("appointment.scheduled", T0 + DAY), ev(miss, at)]
    assert ("no_show_not_rescheduled" in flags(events, at + 3 * DAY + offset)) is (offset > 0)


@pytest.mark.parametrize("rebook", ["appointment.scheduled", "appointment.rescheduled"])
def test_no_show_cleared_by_a_later_booking(rebook: str) -> None:
    no_show = ev("appointment.no_show", T0 + 10 * DAY)
    events = [created(), ev("appointment.scheduled", T0 + DAY), no_show]
    assert "no_show_not_rescheduled" in flags(events, T0 + 20 * DAY)
    later = ev(rebook, T0 + 11 * DAY)
    assert "no_show_not_rescheduled" not in flags([later, *events], T0 + 20 * DAY)


def test_no_show_not_cleared_by_an_earlier_booking_arriving_late() -> None:
    no_show = ev("appointment.no_show", T0 + 10 * DAY)
    earlier = ev("appointment.scheduled", T0 + 9 * DAY)
    assert "no_show_not_rescheduled" in flags([created(), no_show, earlier], T0 + 20 * DAY)


def test_no_show_then_seen_is_not_flagged() -> None:
    events = [
        created(),
        ev("appointment.completed", T0 + DAY),
        ev("appointment.no_show", T0 + 2 * DAY),
    ]
    assert "no_show_not_rescheduled" not in flags(events, T0 + 30 * DAY)


def test_no_show_measured_from_the_latest_appointment_event() -> None:
    events = [
        created(),
        ev("appointment.no_show", T0 + DAY),
        ev("appointment.cancelled", T0 + 5 * DAY),
    ]
    assert "no_show_not_rescheduled" not in flags(events, T0 + 8 * DAY)
    assert "no_show_not_rescheduled" in flags(events, T0 + 8 * DAY + US)


# -- loop_not_closed ----------------------------------------------------------------------


@pytest.mark.parametrize("offset", [-US, 0, US])
def test_loop_not_closed_boundary(offset: int) -> None:
    seen = T0 + 3 * DAY
    events = [created(), ev("appointment.completed", seen)]
    assert ("loop_not_closed" in flags(events, seen + 14 * DAY + offset)) is (offset > 0)


def test_loop_not_closed_from_first_seen() -> None:
    events = [
        created(),
        ev("appointment.completed", T0 + 9 * DAY),
        ev("appointment.completed", T0 + DAY),
    ]
    assert "loop_not_closed" in flags(events, T0 + 15 * DAY + US)


def test_loop_closed_by_report() -> None:
    events = [
        created(),
        ev("appointment.completed", T0 + DAY),
        ev("report.received", T0 + 40 * DAY),
    ]
    assert flags(events, T0 + 50 * DAY) == []


# -- out_of_network -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind", ["referral.routed", "appointment.scheduled", "appointment.rescheduled"]
)
def test_out_of_network(kind: str) -> None:
    assert "out_of_network" in flags([created(), ev(kind, T0 + HOUR, in_network=False)], T0 + HOUR)


def test_out_of_network_follows_the_latest_event_by_time() -> None:
    routed_out = ev("referral.routed", T0 + HOUR, in_network=False)
    booked_in = ev("appointment.scheduled", T0 + 2 * HOUR, in_network=True)
    rebooked_out = ev("appointment.rescheduled", T0 + 3 * HOUR, in_network=False)
    assert "out_of_network" not in flags([created(), booked_in, routed_out], T0 + 4 * HOUR)
    assert "out_of_network" in flags(
        [rebooked_out, created(), booked_in, routed_out], T0 + 4 * HOUR
    )


def test_in_network_routing_and_created_flag_do_not_count() -> None:
    # Only routed/scheduled/rescheduled say where care goes; created's in_network does not.
    events = [
        ev("referral.created", T0, priority="routine", in_network=False),
        ev("referral.routed", T0 + HOUR),
    ]
    assert "out_of_network" not in flags(events, T0 + 2 * HOUR)
    assert "out_of_network" not in flags([created()], T0)


# -- only open referrals ------------------------------------------------------------------

_EVERYTHING_WRONG = [
    created("stat"),
    ev("referral.routed", T0 + 10 * DAY, in_network=False),
    ev("patient.outreach", T0 + DAY),
    ev("patient.outreach", T0 + DAY + 1),
    ev("patient.outreach", T0 + DAY + 2),
]


@pytest.mark.parametrize(
    ("terminal", "status"),
    [
        ([ev("report.received", T0 + DAY)], Status.CLOSED),
        ([ev("referral.cancelled", T0 + DAY)], Status.CANCELLED),
        ([ev("referral.declined", T0 + 11 * DAY)], Status.DECLINED),
        ([ev("care.out_of_network", T0 + DAY)], Status.LEAKED),
        ([ev("appointment.completed", T0 + DAY, in_network=False)], Status.LEAKED),
    ],
)
def test_terminal_referrals_carry_no_flags(terminal: list[TrackedEvent], status: Status) -> None:
    now = T0 + 365 * DAY
    assert flags(_EVERYTHING_WRONG, now) == [
        "scheduling_overdue",
        "patient_unresponsive",
        "out_of_network",
    ]
    state = fold(_EVERYTHING_WRONG + terminal)
    assert state.status is status
    assert evaluate_flags(state, now) == []


def test_orphans_carry_no_flags() -> None:
    state = fold([ev("referral.routed", T0, in_network=False), ev("appointment.no_show", T0)])
    assert state.status is Status.ORPHAN
    assert evaluate_flags(state, T0 + 365 * DAY) == []


def test_empty_state_carries_no_flags() -> None:
    assert evaluate_flags(ReferralState("o", "r"), T0) == []


def test_flags_come_in_rule_order() -> None:
    events = [
        created("stat"),
        ev("patient.outreach", T0),
        ev("appointment.no_show", T0),
        ev("appointment.rescheduled", T0 - 1, in_network=False),
    ]
    got = flags(events, T0 + 30 * DAY)
    assert got == [
        "routing_overdue",
        "scheduling_overdue",
        "patient_unresponsive",
        "no_show_not_rescheduled",
        "out_of_network",
    ]
    assert got == [rule for rule in FLAG_RULES if rule in got]
