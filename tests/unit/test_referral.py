"""SPEC §4: referral state as a pure function of the set of its distinct events."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import EventType, TrackedEvent
from schemas.flags import HOUR, evaluate_flags
from schemas.referral import (
    MILESTONES,
    OPEN_STATUSES,
    TERMINAL_STATUSES,
    ReferralState,
    Status,
    fold,
    new_state,
)
from schemas.snapshot import status_snapshot
from tests.unit.factories import default_data

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z in µs
_ids = count()


def ev(
    kind: str,
    hours: float = 0,
    event_id: str | None = None,
    patient_ref: str | None = None,
    **data: Any,
) -> TrackedEvent:
    """One event of this referral at T0 + hours."""
    payload = default_data(kind, scheduled_at=T0 + 240 * HOUR, rescheduled_at=T0 + 260 * HOUR)
    payload.update(data)
    return TrackedEvent(
        event_id=event_id if event_id is not None else f"e{next(_ids):06d}",
        org_id="northwind",
        referral_id="R-1",
        type=kind,
        occurred_at=T0 + int(hours * HOUR),
        source="ehr",
        patient_ref=patient_ref,
        data=payload,
    )


def status_of(*events: TrackedEvent) -> Status:
    return fold(list(events)).status


CREATED = "referral.created"


# -- status rules, in order --------------------------------------------------------------


def test_no_created_is_orphan() -> None:
    assert status_of(ev("referral.routed", 1), ev("appointment.scheduled", 2)) is Status.ORPHAN


def test_orphan_wins_over_leaked_and_closed() -> None:
    assert status_of(ev("care.out_of_network", 1), ev("report.received", 2)) is Status.ORPHAN


def test_created_only_is_created() -> None:
    assert status_of(ev(CREATED)) is Status.CREATED


def test_leaked_via_care_out_of_network() -> None:
    state = fold([ev(CREATED), ev("referral.routed", 1), ev("care.out_of_network", 5)])
    assert state.leaked is True
    assert state.status is Status.LEAKED


def test_leaked_via_completed_out_of_network() -> None:
    state = fold([ev(CREATED), ev("appointment.completed", 5, in_network=False)])
    assert state.leaked is True
    assert state.status is Status.LEAKED


def test_completed_in_network_is_not_leaked() -> None:
    state = fold([ev(CREATED), ev("appointment.completed", 5)])
    assert state.leaked is False
    assert state.status is Status.SEEN


def test_completed_without_in_network_defaults_to_in_network() -> None:
    completed = ev("appointment.completed", 5)
    bare = TrackedEvent(**{**_fields(completed), "data": {"appointment_id": "A-1"}})
    assert fold([ev(CREATED), bare]).leaked is False


def _fields(event: TrackedEvent) -> dict[str, Any]:
    return {name: getattr(event, name) for name in TrackedEvent.__slots__}


def test_out_of_network_routing_or_booking_is_not_leakage() -> None:
    state = fold(
        [
            ev(CREATED),
            ev("referral.routed", 1, in_network=False),
            ev("appointment.scheduled", 2, in_network=False),
        ]
    )
    assert state.leaked is False
    assert state.status is Status.SCHEDULED


def test_leaked_wins_over_closed_cancelled_declined() -> None:
    events = [
        ev(CREATED),
        ev("referral.declined", 1),
        ev("referral.cancelled", 2),
        ev("report.received", 3),
        ev("care.out_of_network", 4),
    ]
    assert status_of(*events) is Status.LEAKED


def test_closed() -> None:
    assert status_of(ev(CREATED), ev("appointment.completed", 2), ev("report.received", 3)) is (
        Status.CLOSED
    )


def test_closed_wins_over_cancelled_and_declined() -> None:
    events = [
        ev(CREATED),
        ev("referral.cancelled", 1),
        ev("referral.declined", 2),
        ev("report.received", 3),
    ]
    assert status_of(*events) is Status.CLOSED


def test_cancelled() -> None:
    assert status_of(ev(CREATED), ev("referral.routed", 1), ev("referral.cancelled", 2)) is (
        Status.CANCELLED
    )


def test_cancelled_before_scheduling_still_cancelled_even_if_scheduled_later() -> None:
    events = [ev(CREATED), ev("referral.cancelled", 1), ev("appointment.scheduled", 2)]
    assert status_of(*events) is Status.CANCELLED


def test_cancelled_after_seen_is_not_cancelled() -> None:
    events = [ev(CREATED), ev("appointment.completed", 3), ev("referral.cancelled", 4)]
    assert status_of(*events) is Status.SEEN


def test_cancelled_wins_over_declined() -> None:
    events = [ev(CREATED), ev("referral.declined", 1), ev("referral.cancelled", 2)]
    assert status_of(*events) is Status.CANCELLED


def test_appointment_cancelled_is_not_referral_cancelled() -> None:
    events = [ev(CREATED), ev("appointment.scheduled", 1), ev("appointment.cancelled", 2)]
    assert status_of(*events) is Status.SCHEDULED


def test_declined_when_latest_routing_decision() -> None:
    events = [ev(CREATED), ev("referral.routed", 1), ev("referral.declined", 2)]
    assert status_of(*events) is Status.DECLINED


def test_declined_after_accepted() -> None:
    events = [ev(CREATED), ev("referral.accepted", 1), ev("referral.declined", 2)]
    assert status_of(*events) is Status.DECLINED


def test_declined_alone() -> None:
    assert status_of(ev(CREATED), ev("referral.declined", 1)) is Status.DECLINED


@pytest.mark.parametrize("later", ["referral.accepted", "referral.routed"])
def test_not_declined_when_a_later_accept_or_route_exists(later: str) -> None:
    events = [ev(CREATED), ev("referral.declined", 1), ev(later, 2)]
    assert status_of(*events) is Status.ROUTED


def test_declined_latest_is_by_occurred_at_not_arrival() -> None:
    accept, decline = ev("referral.accepted", 5), ev("referral.declined", 3)
    assert status_of(ev(CREATED), accept, decline) is Status.ROUTED
    assert status_of(decline, ev(CREATED), accept) is Status.ROUTED


def test_declined_tie_broken_by_event_id() -> None:
    route, decline = ev("referral.routed", 1, "a"), ev("referral.declined", 1, "b")
    assert status_of(ev(CREATED), decline, route) is Status.DECLINED
    route, decline = ev("referral.routed", 1, "b"), ev("referral.declined", 1, "a")
    assert status_of(ev(CREATED), decline, route) is Status.ROUTED


def test_declined_with_seen_is_seen() -> None:
    events = [ev(CREATED), ev("referral.declined", 1), ev("appointment.completed", 5)]
    assert status_of(*events) is Status.SEEN


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ([], Status.CREATED),
        (["referral.routed"], Status.ROUTED),
        (["referral.accepted"], Status.ROUTED),
        (["referral.routed", "patient.responded"], Status.CONTACTED),
        (["patient.responded"], Status.CONTACTED),
        (["patient.outreach"], Status.CREATED),
        (["referral.routed", "patient.responded", "appointment.scheduled"], Status.SCHEDULED),
        (["appointment.scheduled"], Status.SCHEDULED),
        (["appointment.rescheduled"], Status.CREATED),
        (["appointment.scheduled", "appointment.completed"], Status.SEEN),
        (["appointment.completed"], Status.SEEN),
        (["appointment.no_show", "patient.feedback"], Status.CREATED),
    ],
)
def test_furthest_milestone(kinds: list[str], expected: Status) -> None:
    events = [ev(CREATED)] + [ev(kind, i + 1) for i, kind in enumerate(kinds)]
    assert status_of(*events) is expected


def test_furthest_milestone_is_by_stage_not_time() -> None:
    # Scheduled recorded before routed in time: still the furthest stage reached.
    events = [ev(CREATED, 0), ev("appointment.scheduled", 1), ev("referral.routed", 5)]
    assert status_of(*events) is Status.SCHEDULED


def test_status_sets() -> None:
    assert OPEN_STATUSES | TERMINAL_STATUSES | {Status.ORPHAN} == set(Status)
    assert not OPEN_STATUSES & TERMINAL_STATUSES
    assert fold([ev(CREATED)]).is_open
    assert not fold([ev(CREATED), ev("report.received", 1)]).is_open
    assert not fold([ev("referral.routed")]).is_open


# -- milestones and other fields ---------------------------------------------------------


def test_milestones_map_to_event_types() -> None:
    events = [
        ev(CREATED, 0),
        ev("referral.routed", 1),
        ev("patient.responded", 2),
        ev("appointment.scheduled", 3),
        ev("appointment.completed", 4),
        ev("report.received", 5),
    ]
    state = fold(events)
    assert [state.milestone_at(m) for m in MILESTONES] == [T0 + i * HOUR for i in range(6)]


def test_milestones_are_the_first_occurrence_whatever_the_order() -> None:
    late, early = ev("appointment.scheduled", 9), ev("appointment.scheduled", 3)
    assert fold([ev(CREATED), late, early]).milestone_at("scheduled") == T0 + 3 * HOUR
    assert fold([early, ev(CREATED), late]).milestone_at("scheduled") == T0 + 3 * HOUR


def test_milestone_ties_broken_by_event_id() -> None:
    a, b = ev("appointment.completed", 4, "a"), ev("appointment.completed", 4, "b")
    for order in ([a, b], [b, a]):
        state = fold([ev(CREATED), *order])
        assert state.milestones["seen"][:2] == [T0 + 4 * HOUR, "a"]


def test_routed_milestone_from_accepted() -> None:
    assert fold([ev(CREATED), ev("referral.accepted", 2)]).milestone_at("routed") == T0 + 2 * HOUR
    both = [ev(CREATED), ev("referral.routed", 4), ev("referral.accepted", 2)]
    assert fold(both).milestone_at("routed") == T0 + 2 * HOUR


def test_rescheduled_is_not_the_scheduled_milestone() -> None:
    state = fold([ev(CREATED), ev("appointment.rescheduled", 2)])
    assert state.milestone_at("scheduled") is None
    assert state.appointment_at == T0 + 260 * HOUR


def test_created_milestone_priority_and_specialty_from_first_created() -> None:
    first = ev(CREATED, 1, priority="stat", specialty="oncology")
    second = ev(CREATED, 2, priority="routine", specialty="dermatology")
    for order in ([first, second], [second, first]):
        state = fold(order)
        assert state.milestone_at("created") == T0 + HOUR
        assert (state.priority, state.specialty) == ("stat", "oncology")


def test_priority_and_specialty_none_without_created() -> None:
    state = fold([ev("referral.routed")])
    assert state.priority is None and state.specialty is None


def test_appointment_at_from_latest_scheduled_or_rescheduled() -> None:
    scheduled = ev("appointment.scheduled", 1, appointment_at=T0 + 100 * HOUR)
    rescheduled = ev("appointment.rescheduled", 2, appointment_at=T0 + 200 * HOUR)
    for order in ([scheduled, rescheduled], [rescheduled, scheduled]):
        assert fold([ev(CREATED), *order]).appointment_at == T0 + 200 * HOUR
    # A later scheduled beats an earlier reschedule.
    rebooked = ev("appointment.scheduled", 3, appointment_at=T0 + 150 * HOUR)
    assert fold([rebooked, ev(CREATED), rescheduled, scheduled]).appointment_at == T0 + 150 * HOUR


def test_appointment_at_tie_broken_by_event_id() -> None:
    a = ev("appointment.scheduled", 1, "a", appointment_at=T0 + 100 * HOUR)
    b = ev("appointment.rescheduled", 1, "b", appointment_at=T0 + 200 * HOUR)
    assert fold([b, a]).appointment_at == T0 + 200 * HOUR
    assert fold([a, b]).appointment_at == T0 + 200 * HOUR


def test_appointment_at_none_without_booking() -> None:
    assert fold([ev(CREATED), ev("appointment.no_show", 1)]).appointment_at is None


def test_outreach_attempts_and_no_shows_count_distinct_events() -> None:
    outreach = [ev("patient.outreach", h) for h in (3, 1, 2)]
    no_shows = [ev("appointment.no_show", h) for h in (5, 6)]
    state = fold([ev(CREATED), *outreach, *no_shows, outreach[0], no_shows[1], outreach[2]])
    assert state.outreach_attempts == 3
    assert state.no_shows == 2
    assert state.first_outreach_at == T0 + HOUR


def test_completions_count_distinct_events() -> None:
    done = ev("appointment.completed", 5)
    assert fold([ev(CREATED), done, done, ev("appointment.completed", 6)]).completions == 2


def test_feedback_is_the_latest_score() -> None:
    early, late = ev("patient.feedback", 1, score=2), ev("patient.feedback", 9, score=5)
    assert fold([late, early]).feedback_score == 5
    assert fold([ev(CREATED)]).feedback_score is None


def test_patient_ref_from_first_event_carrying_one() -> None:
    events = [
        ev(CREATED, 2, patient_ref="p_b"),
        ev("referral.routed", 1, patient_ref="p_a"),
        ev("referral.accepted", 0),
    ]
    assert fold(events).patient_ref == "p_a"
    assert fold([ev(CREATED)]).patient_ref is None


def test_in_network_from_latest_routed_or_booking() -> None:
    routed = ev("referral.routed", 1, in_network=False)
    scheduled = ev("appointment.scheduled", 2, in_network=True)
    assert fold([scheduled, routed]).in_network is True
    assert fold([routed]).in_network is False
    assert fold([ev(CREATED)]).in_network is None


def test_last_event_at_and_version() -> None:
    state = fold([ev(CREATED, 3), ev("referral.routed", 7), ev("patient.outreach", 5)])
    assert state.last_event_at == T0 + 7 * HOUR
    assert state.version == 3
    assert state.key == "northwind/R-1"


# -- duplicates ----------------------------------------------------------------------------


def test_duplicate_returns_false_and_changes_nothing() -> None:
    events = [
        ev(CREATED),
        ev("patient.outreach", 1),
        ev("appointment.no_show", 2),
        ev("care.out_of_network", 3),
    ]
    state = fold(events)
    before = json.dumps(state.to_dict(), sort_keys=True)
    for event in events:
        assert state.apply(event) is False
    assert json.dumps(state.to_dict(), sort_keys=True) == before
    assert state.version == len(events)


def test_first_arrival_wins_for_a_reused_event_id() -> None:
    first = ev("patient.outreach", 1, "dup")
    imposter = ev("referral.cancelled", 0, "dup")
    state = new_state("northwind", "R-1")
    assert state.apply(first) is True
    assert state.apply(imposter) is False
    assert state.cancelled is False
    assert state.outreach_attempts == 1


def test_fold_needs_events() -> None:
    with pytest.raises(ValueError):
        fold([])


# -- stage durations -----------------------------------------------------------------------


def test_stage_durations_for_consecutive_present_milestones() -> None:
    state = fold(
        [
            ev(CREATED, 0),
            ev("referral.routed", 2),
            ev("appointment.scheduled", 10),
            ev("appointment.completed", 20),
        ]
    )
    assert state.stage_durations() == [
        ("created", 2 * HOUR),
        ("routed", 8 * HOUR),
        ("scheduled", 10 * HOUR),
    ]


def test_stage_durations_skip_absent_milestones_and_include_closed() -> None:
    state = fold([ev(CREATED, 0), ev("patient.responded", 5), ev("report.received", 30)])
    assert state.stage_durations() == [("created", 5 * HOUR), ("contacted", 25 * HOUR)]


def test_stage_durations_clamped_at_zero_when_out_of_order() -> None:
    state = fold([ev(CREATED, 10), ev("referral.routed", 4), ev("appointment.scheduled", 12)])
    assert state.stage_durations() == [("created", 0), ("routed", 8 * HOUR)]


def test_last_stage_has_no_row() -> None:
    assert fold([ev(CREATED)]).stage_durations() == []
    state = fold([ev(CREATED), ev("referral.routed", 1)])
    assert [stage for stage, _ in state.stage_durations()] == ["created"]


def test_no_stage_durations_without_created() -> None:
    state = fold(
        [ev("referral.routed", 1), ev("appointment.scheduled", 2), ev("appointment.completed", 3)]
    )
    assert state.stage_durations() == []


def test_stage_durations_use_first_milestone_times() -> None:
    state = fold(
        [
            ev(CREATED, 0),
            ev("referral.accepted", 3),
            ev("referral.routed", 1),
            ev("appointment.scheduled", 4),
        ]
    )
    assert state.stage_durations() == [("created", HOUR), ("routed", 3 * HOUR)]


# -- persistence ---------------------------------------------------------------------------


def _rich_state() -> ReferralState:
    return fold(
        [
            ev(CREATED, 0, patient_ref="p_1", priority="urgent"),
            ev("referral.routed", 1, in_network=False),
            ev("referral.declined", 1.5),
            ev("referral.accepted", 2),
            ev("patient.outreach", 3),
            ev("patient.outreach", 4),
            ev("patient.responded", 5),
            ev("appointment.scheduled", 6),
            ev("appointment.no_show", 7),
            ev("appointment.rescheduled", 8),
            ev("appointment.cancelled", 9),
            ev("appointment.completed", 10),
            ev("patient.feedback", 11, score=3),
            ev("referral.cancelled", 12),
        ]
    )


def test_to_dict_from_dict_round_trip_through_json() -> None:
    state = _rich_state()
    restored = ReferralState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored.to_dict() == state.to_dict()
    assert restored.status is state.status is Status.SEEN
    assert restored.stage_durations() == state.stage_durations()
    now = T0 + 1000 * HOUR
    assert evaluate_flags(restored, now) == evaluate_flags(state, now)
    assert status_snapshot(restored, now) == status_snapshot(state, now)
    # Still a working state: duplicates are duplicates, new events fold in.
    assert restored.apply(ev("report.received", 20, "late")) is True
    assert state.apply(ev("report.received", 20, "late")) is True
    assert restored.apply(ev("report.received", 20, "late")) is False
    assert restored.to_dict() == state.to_dict()
    assert restored.status is Status.CLOSED


def test_round_trip_of_declined_keeps_status() -> None:
    state = fold([ev(CREATED), ev("referral.declined", 1)])
    restored = ReferralState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert restored.status is Status.DECLINED


def test_round_trip_of_empty_state() -> None:
    state = new_state("o", "r")
    assert ReferralState.from_dict(json.loads(json.dumps(state.to_dict()))).to_dict() == (
        state.to_dict()
    )


def test_to_dict_is_json_ready() -> None:
    d = _rich_state().to_dict()
    assert json.loads(json.dumps(d)) == d


# -- order independence (property) --------------------------------------------------------

_TYPES = [t.value for t in EventType]
_TIMES = st.integers(min_value=0, max_value=12).map(lambda h: T0 + h * 6 * HOUR) | st.integers(
    min_value=T0, max_value=T0 + 30 * 24 * HOUR
)


def _data_for(kind: str) -> st.SearchStrategy[dict[str, Any]]:
    booked = st.fixed_dictionaries(
        {
            "appointment_id": st.sampled_from(["A-1", "A-2"]),
            "appointment_at": _TIMES,
            "in_network": st.booleans(),
        }
    )
    table: dict[str, st.SearchStrategy[dict[str, Any]]] = {
        "referral.created": st.fixed_dictionaries(
            {
                "priority": st.sampled_from(["routine", "urgent", "stat"]),
                "specialty": st.sampled_from(["cardiology", "oncology"]),
                "in_network": st.booleans(),
            }
        ),
        "referral.routed": st.fixed_dictionaries({"in_network": st.booleans()}),
        "patient.outreach": st.fixed_dictionaries(
            {"channel": st.sampled_from(["sms", "email", "phone"])}
        ),
        "appointment.scheduled": booked,
        "appointment.rescheduled": booked,
        "appointment.cancelled": st.fixed_dictionaries({"appointment_id": st.just("A-1")}),
        "appointment.no_show": st.fixed_dictionaries({"appointment_id": st.just("A-1")}),
        "appointment.completed": st.fixed_dictionaries(
            {"appointment_id": st.just("A-1"), "in_network": st.booleans()}
        ),
        "patient.feedback": st.fixed_dictionaries({"score": st.integers(1, 5)}),
    }
    return table.get(kind, st.just({}))


@st.composite
def referral_events(draw: st.DrawFn) -> list[TrackedEvent]:
    # Short ids from a small alphabet: equal timestamps are common and ties go by id.
    ids = draw(
        st.lists(st.text("abcde", min_size=1, max_size=3), min_size=1, max_size=25, unique=True)
    )
    kinds = draw(
        st.lists(
            st.sampled_from(_TYPES) | st.just("referral.created"),
            min_size=len(ids),
            max_size=len(ids),
        )
    )
    events = []
    for event_id, kind in zip(ids, kinds, strict=True):
        events.append(
            TrackedEvent(
                event_id=event_id,
                org_id="northwind",
                referral_id="R-1",
                type=kind,
                occurred_at=draw(_TIMES),
                source=draw(st.sampled_from(["ehr", "scheduling", "comms", "claims"])),
                patient_ref=draw(st.none() | st.sampled_from(["p_1", "p_2"])),
                data=draw(_data_for(kind)),
            )
        )
    return events


@settings(max_examples=300, deadline=None)
@given(events=referral_events(), data=st.data())
def test_any_arrival_order_with_duplicates_gives_the_same_state(
    events: list[TrackedEvent], data: st.DataObject
) -> None:
    reference = fold(sorted(events, key=lambda e: e.sort_key))
    duplicates = data.draw(st.lists(st.sampled_from(events), max_size=10))
    arrival = data.draw(st.permutations(events + duplicates))

    state = new_state("northwind", "R-1")
    fresh = [state.apply(event) for event in arrival]
    assert sum(fresh) == len(events)

    assert state.to_dict() == reference.to_dict()
    assert state.status is reference.status
    assert state.stage_durations() == reference.stage_durations()
    for now in (T0, T0 + 20 * 24 * HOUR, T0 + 400 * 24 * HOUR):
        assert evaluate_flags(state, now) == evaluate_flags(reference, now)
    assert status_snapshot(state, T0 + 40 * 24 * HOUR) == status_snapshot(
        reference, T0 + 40 * 24 * HOUR
    )
