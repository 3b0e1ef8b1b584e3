"""At-risk flags (SPEC §5): which open referrals are slipping, judged against a clock.

Pure: the caller passes "now" (wall clock in normal running, an injected clock in
tests, the event-time watermark in replay) and the SLA targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from schemas.events import EventType
from schemas.referral import ReferralState

HOUR = 3_600_000_000  # µs
DAY = 24 * HOUR

FLAG_RULES: tuple[str, ...] = (
    "routing_overdue",
    "scheduling_overdue",
    "patient_unresponsive",
    "no_show_not_rescheduled",
    "loop_not_closed",
    "out_of_network",
)


class WorkingTime(Protocol):
    """A business-hours calendar (schemas.calendar): where a span of working time ends."""

    def add(self, start: int, duration: int) -> int: ...


@dataclass(frozen=True, slots=True)
class SlaTargets:
    """SLA targets in µs; SPEC §5 defaults. Per-org and per-specialty values, and an
    optional business-hours calendar, come from the SLA file (schemas.sla)."""

    routing: dict[str, int] = field(
        default_factory=lambda: {"stat": 2 * HOUR, "urgent": 24 * HOUR, "routine": 72 * HOUR}
    )
    scheduling: dict[str, int] = field(
        default_factory=lambda: {"stat": 24 * HOUR, "urgent": 72 * HOUR, "routine": 14 * DAY}
    )
    unresponsive_attempts: int = 3
    unresponsive_after: int = 7 * DAY
    no_show_grace: int = 3 * DAY
    loop_close: int = 14 * DAY
    # Targets count working time only when set; None: every hour counts.
    calendar: WorkingTime | None = None

    def deadline(self, start: int, duration: int) -> int:
        """The instant `duration` of (working) time after `start`."""
        return start + duration if self.calendar is None else self.calendar.add(start, duration)


DEFAULT_TARGETS = SlaTargets()

# Rules that turn on when a clock passes a deadline; the others turn on with an event.
TIMED_RULES = frozenset(
    {
        "routing_overdue",
        "scheduling_overdue",
        "patient_unresponsive",
        "no_show_not_rescheduled",
        "loop_not_closed",
    }
)


def flag_onsets(state: ReferralState, targets: SlaTargets = DEFAULT_TARGETS) -> dict[str, int]:
    """Every rule that holds now or will hold once the clock passes a deadline, with the
    instant it started (or starts) to hold, in event time (µs).

    A timed rule holds while now > its deadline. A rule an event decides (three outreach
    attempts, out of network) holds from that event on; its onset is that event's time
    (for attempts, the newest event's). Only open referrals carry flags."""
    if not state.is_open:
        return {}
    created = state.milestone_at("created")
    assert created is not None  # open implies created
    priority = state.priority or "routine"
    routed = state.milestone_at("routed")
    contacted = state.milestone_at("contacted")
    scheduled = state.milestone_at("scheduled")
    seen = state.milestone_at("seen")
    closed = state.milestone_at("closed")
    onsets: dict[str, int] = {}
    if routed is None:
        target = targets.routing.get(priority, targets.routing["routine"])
        onsets["routing_overdue"] = targets.deadline(created, target)
    if scheduled is None:
        target = targets.scheduling.get(priority, targets.scheduling["routine"])
        onsets["scheduling_overdue"] = targets.deadline(created, target)
    first_outreach = state.first_outreach_at
    if first_outreach is not None and contacted is None and scheduled is None:
        after = targets.deadline(first_outreach, targets.unresponsive_after)
        if state.outreach_attempts >= targets.unresponsive_attempts:
            assert state.last_event_at is not None
            after = min(after, state.last_event_at)
        onsets["patient_unresponsive"] = after
    last_appt = state.last_appointment_event
    if (
        seen is None
        and last_appt is not None
        and last_appt[2] in (EventType.APPOINTMENT_NO_SHOW, EventType.APPOINTMENT_CANCELLED)
    ):
        onsets["no_show_not_rescheduled"] = targets.deadline(last_appt[0], targets.no_show_grace)
    if seen is not None and closed is None:
        onsets["loop_not_closed"] = targets.deadline(seen, targets.loop_close)
    if state.in_network is False:
        assert state.network is not None
        onsets["out_of_network"] = state.network[0]
    return onsets


def _holds(rule: str, onset: int, now: int, state: ReferralState, targets: SlaTargets) -> bool:
    if rule == "out_of_network":
        return True
    if rule == "patient_unresponsive" and state.outreach_attempts >= targets.unresponsive_attempts:
        return True
    return now > onset


@dataclass(frozen=True, slots=True)
class Judgement:
    """A referral judged at one instant: the flags that hold, each rule's onset, and the
    next deadline. The tracker needs all three per referral per batch (alerts, the
    deadline index, the status snapshot); computed together, the onsets are worked out
    once instead of four times (about 2 % of a busy worker)."""

    flags: list[str]  # in FLAG_RULES order
    onsets: dict[str, int]
    deadline: int | None


def judge(state: ReferralState, now: int, targets: SlaTargets = DEFAULT_TARGETS) -> Judgement:
    """Everything `evaluate_flags`, `flag_onsets` and `next_deadline` say, in one pass."""
    onsets = flag_onsets(state, targets)
    if not onsets:
        return Judgement([], onsets, None)
    holds = {rule: _holds(rule, onset, now, state, targets) for rule, onset in onsets.items()}
    pending = [onset for rule, onset in onsets.items() if rule in TIMED_RULES and not holds[rule]]
    return Judgement(
        [rule for rule in FLAG_RULES if holds.get(rule)],
        onsets,
        min(pending) if pending else None,
    )


def evaluate_flags(
    state: ReferralState, now: int, targets: SlaTargets = DEFAULT_TARGETS
) -> list[str]:
    """The flags that hold for this referral at `now` (µs), in FLAG_RULES order."""
    return judge(state, now, targets).flags


def next_deadline(
    state: ReferralState, now: int, targets: SlaTargets = DEFAULT_TARGETS
) -> int | None:
    """The earliest deadline not yet passed at `now` (a flag turns on just after it), or
    None when no time alone can turn another flag on: what the deadline index keeps."""
    return judge(state, now, targets).deadline
