"""SLA alerts (SPEC §5): one alert per (referral, rule) while its flag holds, resolved when
the flag turns off or the referral ends; event-time stamps and stable ids."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.alerts import alert_id, reconcile, severity
from schemas.events import TrackedEvent
from schemas.flags import (
    DAY,
    DEFAULT_TARGETS,
    FLAG_RULES,
    HOUR,
    TIMED_RULES,
    evaluate_flags,
    flag_onsets,
    judge,
    next_deadline,
)
from schemas.referral import ReferralState, fold
from tests.unit.factories import default_data

T0 = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z
_ids = count()


def ev(kind: str, at: int, **data: Any) -> TrackedEvent:
    payload = {**default_data(kind, scheduled_at=T0 + 30 * DAY, rescheduled_at=T0 + 31 * DAY)}
    payload.update(data)
    return TrackedEvent(f"e{next(_ids):06d}", "acme", "R-1", kind, at, "ehr", "p_x", payload)


def test_a_deadline_raises_one_alert_stamped_at_the_deadline() -> None:
    state = fold([ev("referral.created", T0, priority="urgent")])
    quiet = reconcile(state, {}, T0 + 24 * HOUR, DEFAULT_TARGETS)
    assert quiet.events == [] and quiet.firing == {}
    first = reconcile(state, {}, T0 + 30 * HOUR, DEFAULT_TARGETS)
    assert first.raised == ["routing_overdue"]
    assert first.firing == {"routing_overdue": T0 + 24 * HOUR}
    (message,) = first.events
    assert message["state"] == "firing"
    assert message["raised_at"] == "2025-01-02T00:00:00.000000Z"
    assert message["resolved_at"] is None
    assert message["severity"] == "high"
    assert message["alert_id"] == alert_id("acme", "R-1", "routing_overdue", T0 + 24 * HOUR)
    # Judged again later: still firing, nothing new.
    again = reconcile(state, first.firing, T0 + 40 * HOUR, DEFAULT_TARGETS)
    assert again.events == [] and again.firing == first.firing


def test_an_event_resolves_the_alert_at_its_own_time() -> None:
    events = [ev("referral.created", T0, priority="urgent")]
    firing = reconcile(fold(events), {}, T0 + 30 * HOUR, DEFAULT_TARGETS).firing
    events.append(ev("referral.routed", T0 + 31 * HOUR))
    result = reconcile(fold(events), firing, T0 + 32 * HOUR, DEFAULT_TARGETS)
    assert result.resolved == ["routing_overdue"] and result.firing == {}
    (message,) = result.events
    assert message["state"] == "resolved"
    assert message["raised_at"] == "2025-01-02T00:00:00.000000Z"
    assert message["resolved_at"] == "2025-01-02T07:00:00.000000Z"
    assert message["alert_id"] == alert_id("acme", "R-1", "routing_overdue", T0 + 24 * HOUR)


def test_a_late_event_from_before_the_deadline_resolves_no_earlier_than_raised() -> None:
    events = [ev("referral.created", T0, priority="urgent")]
    firing = reconcile(fold(events), {}, T0 + 30 * HOUR, DEFAULT_TARGETS).firing
    events.append(ev("referral.routed", T0 + HOUR))  # happened in time, arrived late
    (message,) = reconcile(fold(events), firing, T0 + 31 * HOUR, DEFAULT_TARGETS).events
    assert message["resolved_at"] == message["raised_at"]


def test_a_terminal_status_resolves_every_alert() -> None:
    events = [ev("referral.created", T0, priority="stat")]
    events.append(ev("referral.routed", T0 + HOUR, in_network=False))
    state = fold(events)
    firing = reconcile(state, {}, T0 + 30 * DAY, DEFAULT_TARGETS).firing
    assert set(firing) == {"scheduling_overdue", "out_of_network"}
    events.append(ev("referral.cancelled", T0 + 31 * DAY))
    result = reconcile(fold(events), firing, T0 + 31 * DAY, DEFAULT_TARGETS)
    assert sorted(result.resolved) == sorted(firing) and result.firing == {}


def test_stat_referrals_page_one_level_higher() -> None:
    assert severity("routing_overdue", "routine") == "high"
    assert severity("routing_overdue", "stat") == "critical"
    assert severity("out_of_network", "stat") == "medium"
    assert {severity(rule, None) for rule in FLAG_RULES} <= {"low", "medium", "high"}


def test_alert_messages_carry_no_patient_identifier() -> None:
    state = fold([ev("referral.created", T0, priority="stat")])
    (message,) = reconcile(state, {}, T0 + 3 * HOUR, DEFAULT_TARGETS).events
    text = json.dumps(message)
    assert "p_x" not in text and "patient" not in text
    assert set(message) == {
        "schema",
        "alert_id",
        "org_id",
        "referral_id",
        "rule",
        "severity",
        "state",
        "raised_at",
        "resolved_at",
        "details",
    }


# -- the deadline index agrees with the flags ----------------------------------------------

KINDS = [
    "referral.created",
    "referral.routed",
    "patient.outreach",
    "patient.responded",
    "appointment.scheduled",
    "appointment.no_show",
    "appointment.cancelled",
    "appointment.completed",
    "report.received",
    "referral.cancelled",
]
timeline = st.lists(
    st.tuples(st.sampled_from(KINDS), st.integers(0, 40 * DAY // HOUR)), min_size=1, max_size=8
)


def state_of(steps: list[tuple[str, int]], priority: str) -> ReferralState:
    events = [ev("referral.created", T0, priority=priority)]
    events += [ev(kind, T0 + hours * HOUR) for kind, hours in steps]
    return fold(events)


@settings(max_examples=400, deadline=None)
@given(
    steps=timeline,
    priority=st.sampled_from(["stat", "urgent", "routine"]),
    now_h=st.integers(0, 60 * 24),
)
def test_flags_change_by_time_only_just_after_the_next_deadline(
    steps: list[tuple[str, int]], priority: str, now_h: int
) -> None:
    """Between now and the next deadline the flags stay as they are; just after it, one
    more holds. With no deadline, time alone never adds a flag."""
    state = state_of(steps, priority)
    now = T0 + now_h * HOUR
    flags_now = evaluate_flags(state, now)
    deadline = next_deadline(state, now)
    if deadline is None:
        assert evaluate_flags(state, now + 10_000 * DAY) == flags_now
        return
    assert deadline >= now
    assert evaluate_flags(state, deadline) == flags_now
    after = evaluate_flags(state, deadline + 1)
    assert set(flags_now) < set(after)


@settings(max_examples=400, deadline=None)
@given(
    steps=timeline,
    priority=st.sampled_from(["stat", "urgent", "routine"]),
    now_h=st.integers(0, 60 * 24),
    firing=st.dictionaries(st.sampled_from(FLAG_RULES), st.integers(0, 10**6), max_size=3),
)
def test_one_judgement_answers_as_each_question_asked_alone(
    steps: list[tuple[str, int]], priority: str, now_h: int, firing: dict[str, int]
) -> None:
    """`judge` (what the tracker calls once per referral) agrees with the rules spelled
    out one by one: the flags holding, the earliest deadline not yet passed, and the
    alerts reconciled with or without it."""
    state = state_of(steps, priority)
    now = T0 + now_h * HOUR
    onsets = flag_onsets(state, DEFAULT_TARGETS)
    holding = [
        rule
        for rule in FLAG_RULES
        if rule in onsets
        and (
            rule == "out_of_network"
            or (rule == "patient_unresponsive" and state.outreach_attempts >= 3)
            or now > onsets[rule]
        )
    ]
    pending = [at for rule, at in onsets.items() if rule in TIMED_RULES and rule not in holding]
    judged = judge(state, now)
    assert judged.flags == holding == evaluate_flags(state, now)
    assert judged.onsets == onsets
    assert judged.deadline == (min(pending) if pending else None) == next_deadline(state, now)
    alone = reconcile(state, firing, now, DEFAULT_TARGETS)
    assert reconcile(state, firing, now, DEFAULT_TARGETS, judged) == alone
    assert set(alone.firing) == set(holding)
